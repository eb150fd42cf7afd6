"""Checkpoint loading: a local Hugging Face directory (config.json + safetensors) -> `CausalLM`.

Invariants: only safetensors are read (never pickle); config.json is read with transformers'
defaults filled in (batchcli.model_config), never with remote code; every tensor of the checkpoint is used
exactly once, so a missing or unexpected tensor (a bias we would not apply, a module we do not know) is an error
rather than a silently wrong model. A base model saved on its own (tensor names without the
"model." prefix, as embedding checkpoints often are) loads the same way. Weights are fused (q|k|v, gate|up) and cast while loading, one
layer at a time, so peak host memory stays near the size of the loaded model.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from batchcli.engine.attention import make_backend
from batchcli.engine.attention.backend import AttnShape
from batchcli.engine.model import SUPPORTED_DTYPES, CausalLM, LayerWeights, ModelWeights
from batchcli.errors import CheckpointError
from batchcli.model_config import ArchConfig, load_config, read_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class _TensorSource:
    """Lazy view over the checkpoint's safetensors files that records which names were taken."""

    def __init__(self, directory: Path, files: ExitStack) -> None:
        if (directory / INDEX_FILE).is_file():
            weight_map = read_json(directory / INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{directory / INDEX_FILE} has no weight_map")
        elif (directory / SINGLE_FILE).is_file():
            weight_map = None
        else:
            raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory} (only safetensors are read)")
        names = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        try:
            handles = {n: files.enter_context(safe_open(str(directory / n), framework="pt", device="cpu"))
                       for n in names}
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"cannot open the safetensors files of {directory}: {exc}") from exc
        where = weight_map or {k: SINGLE_FILE for k in handles[SINGLE_FILE].keys()}
        # a base model saved on its own (as embedding models often are) names its tensors without "model."
        base = "model.embed_tokens.weight" not in where and "embed_tokens.weight" in where
        self.stored = {(f"model.{k}" if base else k): k for k in where}  # our name -> the file's name
        self.where = {name: where[k] for name, k in self.stored.items()}
        self.handles = handles
        self.unused = set(self.where)

    def has(self, name: str) -> bool:
        return name in self.where

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `name`, checked to have the `shape` the config implies."""
        if name not in self.where:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}")
        self.unused.discard(name)
        t = self.handles[self.where[name]].get_tensor(self.stored[name])
        if tuple(t.shape) != shape:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(t.shape)}; the config implies {shape}")
        return t


def _layer(src: _TensorSource, arch: ArchConfig, i: int, dtype: torch.dtype, device: torch.device) -> LayerWeights:
    p = f"model.layers.{i}."
    att, mlp = p + "self_attn.", p + "mlp."
    D, d = arch.hidden_size, arch.head_dim
    rows = {"q": arch.num_heads * d, "k": arch.num_kv_heads * d, "v": arch.num_kv_heads * d,
            "gate": arch.intermediate_size, "up": arch.intermediate_size}

    def req(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return src.take(name, shape).to(device=device, dtype=dtype)

    def opt(name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        return req(name, shape) if src.has(name) else None

    def fused(prefix: str, parts: tuple[str, ...], suffix: str) -> torch.Tensor | None:
        names = [f"{prefix}{x}_proj.{suffix}" for x in parts]
        present = [src.has(n) for n in names]
        if suffix == "bias" and not any(present):
            return None
        if suffix == "bias" and not all(present):
            raise CheckpointError(f"{names}: some of the tensors fused together have a bias and some do not")
        shapes = [(rows[x], D) if suffix == "weight" else (rows[x],) for x in parts]
        return torch.cat([src.take(n, shape) for n, shape in zip(names, shapes)]).to(device=device, dtype=dtype)

    qk_norm = None
    if arch.qk_norm:
        q_norm, k_norm = src.take(att + "q_norm.weight", (d,)), src.take(att + "k_norm.weight", (d,))
        qk_norm = torch.cat([q_norm.expand(arch.num_heads, -1), k_norm.expand(arch.num_kv_heads, -1)])  # [H + n_kv, d]
        qk_norm = qk_norm.to(device=device, dtype=dtype)
    return LayerWeights(
        input_norm=req(p + "input_layernorm.weight", (D,)),
        qkv=fused(att, ("q", "k", "v"), "weight"), qkv_bias=fused(att, ("q", "k", "v"), "bias"), qk_norm=qk_norm,
        o_proj=req(att + "o_proj.weight", (D, rows["q"])), o_bias=opt(att + "o_proj.bias", (D,)),
        post_norm=req(p + "post_attention_layernorm.weight", (D,)),
        gate_up=fused(mlp, ("gate", "up"), "weight"), gate_up_bias=fused(mlp, ("gate", "up"), "bias"),
        down=req(mlp + "down_proj.weight", (D, rows["up"])), down_bias=opt(mlp + "down_proj.bias", (D,)),
    )


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported; use one of {', '.join(map(str, SUPPORTED_DTYPES))}")


def load_model(
    path: str | Path, dtype: torch.dtype, device: torch.device | str, attention: str
) -> CausalLM:
    """Load a Llama-family checkpoint directory into our model code, on `device` in `dtype`, attending
    with the eager backend named `attention` (see batchcli.engine.attention)."""
    _check_dtype(dtype)
    arch = load_config(path)
    device = torch.device(device)
    with ExitStack() as files:
        src = _TensorSource(Path(path), files)
        vocab_by_hidden = (arch.vocab_size, arch.hidden_size)
        embed = src.take("model.embed_tokens.weight", vocab_by_hidden).to(device=device, dtype=dtype)  # [V, D]
        layers = tuple(_layer(src, arch, i, dtype, device) for i in range(arch.num_layers))
        norm = src.take("model.norm.weight", (arch.hidden_size,)).to(device=device, dtype=dtype)  # [D]
        if arch.tie_word_embeddings:
            src.unused.discard("lm_head.weight")  # transformers ties it to the embedding even if saved
            lm_head = embed
        else:
            lm_head = src.take("lm_head.weight", vocab_by_hidden).to(device=device, dtype=dtype)  # [V, D]
        unexpected = sorted(n for n in src.unused if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} tensors the model does not use: {unexpected[:5]}")
    weights = ModelWeights(embed=embed, layers=layers, norm=norm, lm_head=lm_head)
    return CausalLM(arch, weights, make_backend(attention, AttnShape(arch.num_heads, arch.num_kv_heads, dtype, arch.head_dim)))


