"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM) over one flat, unpadded token batch.

The model sees tensors and attention metadata only: token ids, their absolute positions, the paged KV
cache and the rows to sample. Invariants: every layer writes the K/V of every row of the step into the
cache (`write_kv`, or the fused `rope_store_kv`), the attention backend plans once per step and
runs per layer, and only the rows asked for go through the final norm (`hidden`), and only the
rows that need logits through the LM head (`logits`), so a prefill chunk that samples nothing, or a
pooled row that wants a hidden state, costs no vocabulary-sized matmul. Weights arrive already fused
(q|k|v in one matrix, gate|up in one) from `batchcli.engine.weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from batchcli.engine.attention.backend import AttentionBackend
from batchcli.engine.attention.metadata import AttnMetadata, write_kv
from batchcli.engine.native.linear import pack_weights, project
from batchcli.engine.native.ops import NativeAttention, NativeKV, NativeOps
from batchcli.model_config import ArchConfig, RopeConfig

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

def kv_bytes_per_token(arch: ArchConfig, dtype: torch.dtype) -> int:
    """Bytes of K and V one token occupies across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * element


def allocate_kv(arch: ArchConfig, dtype: torch.dtype, num_blocks: int, block_size: int,
                device: torch.device | str) -> torch.Tensor:
    """The paged KV cache, zeroed: [num_layers, 2 (k, v), num_blocks, block_size, n_kv, head_dim]."""
    if num_blocks <= 0 or block_size <= 0:
        raise ValueError(f"num_blocks and block_size must be > 0, got {num_blocks} and {block_size}")
    shape = (arch.num_layers, 2, num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
    return torch.zeros(shape, dtype=dtype, device=device)


@dataclass(frozen=True, slots=True)
class LayerWeights:
    """One decoder layer's tensors, fused; biases are None when the checkpoint has none."""

    input_norm: torch.Tensor  # [D]
    qkv: torch.Tensor  # [(H + 2 n_kv) d, D]: q rows, then k rows, then v rows
    qkv_bias: torch.Tensor | None  # [(H + 2 n_kv) d]
    qk_norm: torch.Tensor | None  # [H + n_kv, d]: q_norm repeated over q heads, then k_norm over k heads
    o_proj: torch.Tensor  # [D, H d]
    o_bias: torch.Tensor | None  # [D]
    post_norm: torch.Tensor  # [D]
    gate_up: torch.Tensor  # [2 I, D]: gate rows, then up rows
    gate_up_bias: torch.Tensor | None  # [2 I]
    down: torch.Tensor  # [D, I]
    down_bias: torch.Tensor | None  # [D]


@dataclass(frozen=True, slots=True)
class ModelWeights:
    embed: torch.Tensor  # [V, D]
    layers: tuple[LayerWeights, ...]
    norm: torch.Tensor  # [D]
    lm_head: torch.Tensor  # [V, D]; the embedding itself when tied


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies, float32 [head_dim / 2], after the config's scaling rule."""
    inv = 1.0 / rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [d/2]
    if rope.kind == "linear":
        return inv / rope.factor
    if rope.kind == "llama3":
        # long wavelengths are interpolated by `factor`, short ones kept, the band between blended
        wavelen = 2 * math.pi / inv  # [d/2]
        old = rope.original_max_position
        smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)  # [d/2]
        blended = (1 - smooth) * inv / rope.factor + smooth * inv  # [d/2]
        kept = torch.where(wavelen < old / rope.high_freq_factor, inv, blended)  # [d/2]
        return torch.where(wavelen > old / rope.low_freq_factor, inv / rope.factor, kept)
    return inv


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, statistics in float32, scaled in x's dtype (as transformers does)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head: x [T, h, d], cos/sin [T, 1, d/2] -> [T, h, d]."""
    x1, x2 = x.chunk(2, dim=-1)  # [T, h, d/2] each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # [T, h, d]


class CausalLM:
    """A loaded decoder: `model(input_ids, positions, kv, meta, sample_rows) -> float32 logits`.

    Two forward passes compute the same function: the eager one (torch ops, any attention backend,
    KV in the standard layout) and, when `fused` ops are given, one where each layer's element-wise
    work runs as three fused CPU ops, attention as the native backend (keys in the native layout,
    see batchcli.engine.native.ops) and bf16 projections on weights packed once
    (batchcli.engine.native.linear); the engine picks one per run and never mixes them.
    `backend` is the eager pass's attention; the fused pass always runs the native one.
    """

    def __init__(self, arch: ArchConfig, weights: ModelWeights, backend: AttentionBackend,
                 fused: NativeOps | None = None) -> None:
        if len(weights.layers) != arch.num_layers:
            raise ValueError(f"{len(weights.layers)} layer weights for {arch.num_layers} layers")
        if weights.embed.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {weights.embed.dtype} is not supported; use one of {SUPPORTED_DTYPES}")
        self.arch = arch
        self.weights = weights if fused is None else pack_weights(weights)
        self.backend = backend
        self.fused = fused
        self.native = None if fused is None else NativeAttention(fused, arch.num_kv_heads, arch.num_heads // arch.num_kv_heads)
        self.scale = arch.head_dim**-0.5
        # the whole table up front: max_position_embeddings x d/2 is at most a few tens of MB
        pos = torch.arange(arch.max_position_embeddings, dtype=torch.float32)  # [P]
        freqs = torch.outer(pos, rope_inv_freq(arch.rope, arch.head_dim))  # [P, d/2]
        self.cos = freqs.cos().to(device=self.device, dtype=self.dtype)  # [P, d/2]
        self.sin = freqs.sin().to(device=self.device, dtype=self.dtype)  # [P, d/2]

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.weights.embed.device

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor,
                 meta: AttnMetadata, sample_rows: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] of `sample_rows` (see `hidden`)."""
        return self.logits(self.hidden(input_ids, positions, kv, meta, sample_rows))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head over final hidden states [N, D]: float32 logits [N, vocab]."""
        return project(hidden, self.weights.lm_head, None).float()  # [N, V]

    @torch.inference_mode()
    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor,
               meta: AttnMetadata, rows: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: int64 [T]; kv: [L, 2, blocks, bs, n_kv, d]; rows: int64 [N].

        Returns the final hidden states (after the final norm, in the model's dtype) [N, D] of `rows`;
        writes all T rows' K/V into `kv`. Positions must be < max_position_embeddings (the engine
        rejects longer prompts up front).
        """
        if self.fused is not None:
            return self._forward_fused(self.fused, input_ids, positions, kv, meta, rows)
        w = self.weights
        plan = self.backend.plan(meta)
        h = F.embedding(input_ids, w.embed)  # [T, D]
        cos = self.cos[positions].unsqueeze(1)  # [T, 1, d/2]
        sin = self.sin[positions].unsqueeze(1)  # [T, 1, d/2]
        for lw, layer_kv in zip(w.layers, kv, strict=True):
            h += self._attention(lw, rms_norm(h, lw.input_norm, self.arch.rms_norm_eps), cos, sin, layer_kv, meta, plan)
            h += self._mlp(lw, rms_norm(h, lw.post_norm, self.arch.rms_norm_eps))
        return rms_norm(h[rows], w.norm, self.arch.rms_norm_eps)  # [N, D]

    def _forward_fused(self, ops: NativeOps, input_ids: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor,
                       meta: AttnMetadata, rows: torch.Tensor) -> torch.Tensor:
        """The same function as the eager pass, with each layer's residual add folded into the next norm."""
        a, w = self.arch, self.weights
        n_q, n_kv, d, eps = a.num_heads, a.num_kv_heads, a.head_dim, a.rms_norm_eps  # weights may be packed: project()
        tokens = input_ids.shape[0]
        assert self.native is not None, "the fused pass runs the native attention backend"
        work = self.native.plan(meta)
        h = F.embedding(input_ids, w.embed)  # [T, D]: the residual stream
        delta = None  # the last MLP's output, added to h by the next norm
        for lw, layer_kv in zip(w.layers, kv, strict=True):
            x = ops.add_rms_norm(h, delta, lw.input_norm, eps)  # [T, D]
            qkv = project(x, lw.qkv, lw.qkv_bias).view(tokens, n_q + 2 * n_kv, d)  # [T, H + 2 n_kv, d]
            if lw.qk_norm is not None:
                qkv[:, : n_q + n_kv] = rms_norm(qkv[:, : n_q + n_kv], lw.qk_norm, eps)
            cache = NativeKV.over(layer_kv)  # the same storage in the native layout
            q = ops.rope_store_kv(qkv, self.cos, self.sin, positions, meta.slot_mapping, cache, n_q)  # [T, H, d]
            out = self.native.run(q, cache.keys, cache.values, work, self.scale)  # [T, H, d]
            o = project(out.view(tokens, n_q * d), lw.o_proj, lw.o_bias)  # [T, D]
            x = ops.add_rms_norm(h, o, lw.post_norm, eps)  # h += o
            delta = project(ops.silu_mul(project(x, lw.gate_up, lw.gate_up_bias)), lw.down, lw.down_bias)  # [T, D]
        h += delta
        return rms_norm(h[rows], w.norm, eps)  # [N, D]

    def _attention(self, lw: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   layer_kv: torch.Tensor, meta: AttnMetadata, plan: object) -> torch.Tensor:
        a = self.arch
        n_q, n_kv = a.num_heads, a.num_kv_heads
        qkv = F.linear(x, lw.qkv, lw.qkv_bias).view(x.shape[0], n_q + 2 * n_kv, a.head_dim)  # [T, H + 2 n_kv, d]
        qk = qkv[:, : n_q + n_kv]  # [T, H + n_kv, d]
        if lw.qk_norm is not None:
            qk = rms_norm(qk, lw.qk_norm, a.rms_norm_eps)  # [T, H + n_kv, d]
        q, k = apply_rope(qk, cos, sin).split((n_q, n_kv), dim=1)  # [T, H, d], [T, n_kv, d]
        v = qkv[:, n_q + n_kv :]  # [T, n_kv, d]
        write_kv(k, v, layer_kv[0], layer_kv[1], meta)
        out = self.backend.run(q, layer_kv[0], layer_kv[1], plan, self.scale)  # [T, H, d]
        return F.linear(out.reshape(x.shape[0], n_q * a.head_dim), lw.o_proj, lw.o_bias)  # [T, D]

    def _mlp(self, lw: LayerWeights, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, lw.gate_up, lw.gate_up_bias).chunk(2, dim=-1)  # [T, I] each
        return F.linear(F.silu(gate) * up, lw.down, lw.down_bias)  # [T, D]
