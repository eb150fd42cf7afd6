"""Checkpoint loading: a local Hugging Face directory (config.json + safetensors) -> `CausalLM`.

Invariants: only safetensors are read (never pickle); config.json is read with transformers'
defaults filled in (hf_config.py), never with remote code; every tensor of the checkpoint is used
exactly once, so a missing or unexpected tensor (a bias we would not apply, a module we do not know) is an error
rather than a silently wrong model. A base model saved on its own (tensor names without the
"model." prefix, as embedding checkpoints often are) loads the same way. Weights are fused (q|k|v, gate|up) and cast while loading, one
layer at a time, so peak host memory stays near the size of the loaded model.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from batchcli.engine.attention import make_backend
from batchcli.engine.attention.backend import AttnShape
from batchcli.engine.hf_config import read_hf_config
from batchcli.engine.model import (
    SUPPORTED_DTYPES, ArchConfig, CausalLM, LayerWeights, ModelWeights, RopeConfig,
    UnsupportedModelError, check_model_type,
)
from batchcli.errors import BatchError, CheckpointError, ModelNotFoundError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "max_position_embeddings")  # derived buffers some old exports saved



def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


_ROPE_KEYS = {
    "default": ("rope_theta",),
    "linear": ("rope_theta", "factor"),
    "llama3": ("rope_theta", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _rope_config(config: object) -> RopeConfig:
    params = dict(getattr(config, "rope_parameters", None) or {})
    kind = params.get("rope_type", "default")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError(f"partial_rotary_factor {params['partial_rotary_factor']} is not supported")
    missing = [k for k in _ROPE_KEYS.get(kind, ()) if k not in params]
    if missing:
        raise CheckpointError(f"{kind} rope parameters lack {missing}: {params}")
    return RopeConfig(
        theta=float(params.get("rope_theta", 0.0)), kind=kind, factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(params.get("original_max_position_embeddings", 0)),
    )


def arch_from_config(config: object) -> ArchConfig:
    """Check a transformers config against what the model code implements and keep its numbers."""
    check_model_type(config.model_type)
    if config.hidden_act != "silu":
        raise UnsupportedModelError(f"hidden_act {config.hidden_act!r} is not supported; only 'silu' is")
    window = getattr(config, "sliding_window", None)
    if window is not None and window < config.max_position_embeddings:
        raise UnsupportedModelError(
            f"sliding_window {window} < max_position_embeddings {config.max_position_embeddings}: "
            "sliding-window attention is not supported"
        )
    return ArchConfig(
        model_type=config.model_type, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        vocab_size=config.vocab_size, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=float(config.rms_norm_eps), rope=_rope_config(config), qk_norm=config.model_type == "qwen3",
        tie_word_embeddings=bool(config.tie_word_embeddings),
    )


class _TensorSource:
    """Lazy view over the checkpoint's safetensors files that records which names were taken."""

    def __init__(self, directory: Path, files: ExitStack) -> None:
        if (directory / INDEX_FILE).is_file():
            weight_map = _read_json(directory / INDEX_FILE).get("weight_map")
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


def load_config(path: str | Path) -> ArchConfig:
    """Read and check a local model directory's config (offline, no remote code)."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"no model at {str(directory)!r}: config.json not found")
    raw = _read_json(directory / "config.json")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{directory / 'config.json'} does not hold a JSON object")
    check_model_type(raw.get("model_type"))
    config = read_hf_config(directory, raw["model_type"])
    bad = [f"{k}={getattr(config, k, None)!r}" for k in _INT_FIELDS if type(getattr(config, k, None)) is not int]
    if bad:
        raise CheckpointError(f"{directory / 'config.json'}: {', '.join(bad)}: must be integers")
    try:
        return arch_from_config(config)
    except BatchError:  # already says what is unsupported or wrong
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # another field of the wrong type or range
        raise CheckpointError(f"{directory / 'config.json'} is not a usable config: {exc}") from None


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


def eos_token_ids(path: str | Path) -> tuple[int, ...]:
    """End-of-sequence ids: config.json's, then generation_config.json's, without duplicates."""
    directory = Path(path)
    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        if not (directory / name).is_file():
            continue
        value = _read_json(directory / name).get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if token is None:
                continue
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise CheckpointError(f"{directory / name}: eos_token_id {value!r} is not a token id")
            if token not in ids:
                ids.append(token)
    return tuple(ids)
