"""Typed torch-facing wrappers over the fused CPU ops of ops.cpp.

Each wrapper checks what the C code assumes (CPU, contiguous, one dtype of bfloat16 or float32,
sizes a multiple of the vector width) with a ValueError naming the argument, then passes raw
pointers; `NativeAttention` is the "native" attention backend over them. Invariant: the C code
never sees a tensor these checks did not pass.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from batchcli.engine.attention.metadata import AttnMetadata
from batchcli.engine.native.build import NativeLib
from batchcli.engine.native.work import AttentionWork, attention_work

_SUFFIX = {torch.bfloat16: "bf16", torch.float32: "f32"}
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "add_rms_norm": (_P, _P, _P, _P, _I, _I, _F),
    "silu_mul": (_P, _P, _I, _I),
    "rope_store_kv": (_P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I),
    "paged_attention": (_P, _P, _P, _P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _F),
}
VECTOR = 16  # float32 lanes of one AVX-512 register: sizes the C loops step by


def supports(dtype: torch.dtype, hidden: int, intermediate: int, head_dim: int, block_size: int) -> str | None:
    """None when the fused ops can run this model, else the reason they cannot."""
    if dtype not in _SUFFIX:
        return f"dtype {dtype} (the fused ops run bfloat16 and float32)"
    for name, value, step in (("hidden_size", hidden, VECTOR), ("intermediate_size", intermediate, VECTOR),
                              ("head_dim", head_dim, 2 * VECTOR), ("block_size", block_size, VECTOR)):
        if value % step:
            return f"{name} {value} (the fused ops need a multiple of {step})"
    return None


def _ptr(t: torch.Tensor | np.ndarray | None) -> int | None:
    if t is None:
        return None
    return t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data


def _check(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    # called ~20 times per layer: the cheapest attribute reads first, the message only on failure
    if t.dtype is not dtype or not t.is_cpu or not t.is_contiguous():
        raise ValueError(f"{name}: want a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device} "
                         f"(contiguous={t.is_contiguous()})")


class NativeOps:
    """The fused ops bound for one dtype."""

    def __init__(self, native: NativeLib, dtype: torch.dtype) -> None:
        if dtype not in _SUFFIX:
            raise ValueError(f"the fused ops run bfloat16 or float32, not {dtype}")
        self.dtype = dtype
        self.build_s = native.build_s
        self._fn = {}
        for name, args in _SIGNATURES.items():
            fn = getattr(native.lib, f"batchllm_{name}_{_SUFFIX[dtype]}")
            fn.argtypes, fn.restype = args, None
            self._fn[name] = fn

    def add_rms_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [T, D] += delta (in place, if given); returns rms_norm(x) * weight [T, D]."""
        for name, t in (("x", x), ("weight", weight)) + ((("delta", delta),) if delta is not None else ()):
            _check(name, t, self.dtype)
        if (delta is not None and delta.shape != x.shape) or weight.shape != x.shape[-1:]:
            raise ValueError(f"add_rms_norm: x {tuple(x.shape)}, delta {None if delta is None else tuple(delta.shape)}, "
                             f"weight {tuple(weight.shape)} do not match")
        out = torch.empty_like(x)
        self._fn["add_rms_norm"](_ptr(x), _ptr(delta), _ptr(weight), _ptr(out), x.shape[0], x.shape[1], eps)
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up [T, 2I] -> silu(gate) * up [T, I]."""
        _check("gate_up", gate_up, self.dtype)
        rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
        out = gate_up.new_empty(rows, inter)
        self._fn["silu_mul"](_ptr(gate_up), _ptr(out), rows, inter)
        return out

    def rope_store_kv(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                      slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, n_q: int) -> torch.Tensor:
        """qkv [T, H + 2 n_kv, d]; rotates q (returned, [T, H, d]) and k, writes k and v to their slots.

        k_cache is [blocks, n_kv, d, bs] (native layout), v_cache [blocks, bs, n_kv, d]; positions index
        cos/sin [P, d/2]; slots int64 [T].
        """
        for name, t in (("qkv", qkv), ("cos", cos), ("sin", sin), ("k_cache", k_cache), ("v_cache", v_cache)):
            _check(name, t, self.dtype)
        for name, t in (("positions", positions), ("slots", slots)):
            _check(name, t, torch.int64)
        tokens, heads, d = qkv.shape
        n_kv = (heads - n_q) // 2
        if k_cache.shape[1:3] != (n_kv, d) or v_cache.shape[2:] != (n_kv, d) or cos.shape[1] != d // 2:
            raise ValueError(f"rope_store_kv: qkv {tuple(qkv.shape)} with {n_q} q heads does not fit "
                             f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}, cos {tuple(cos.shape)}")
        q = qkv.new_empty(tokens, n_q, d)
        self._fn["rope_store_kv"](_ptr(qkv), _ptr(cos), _ptr(sin), _ptr(positions), _ptr(slots), _ptr(q),
                                  _ptr(k_cache), _ptr(v_cache), tokens, n_q, n_kv, d, k_cache.shape[3])
        return q

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, work: AttentionWork,
                        scale: float) -> torch.Tensor:
        """q [T, H, d] against each chunk's key blocks (see AttentionWork) -> [T, H, d]."""
        for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
            _check(name, t, self.dtype)
        tokens, n_q, d = q.shape
        n_kv, bs = k_cache.shape[1], k_cache.shape[3]
        out = torch.empty_like(q)
        self._fn["paged_attention"](_ptr(q), _ptr(k_cache), _ptr(v_cache), _ptr(out), work.addresses[0], len(work.items),
                                    work.max_vectors, *work.addresses[1:], n_q, n_kv, d, bs, scale)
        return out


class NativeAttention:
    """The "native" backend: plan = the step's work list, run = the paged kernel. Keys are in the
    native layout [blocks, n_kv, d, bs] (rope_store_kv writes them so)."""

    def __init__(self, ops: NativeOps, num_kv_heads: int, group: int) -> None:
        self.ops, self.num_kv_heads, self.group = ops, num_kv_heads, group

    def plan(self, meta: AttnMetadata) -> AttentionWork:
        return attention_work(meta.host, self.num_kv_heads, self.group)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionWork,
            scale: float) -> torch.Tensor:
        return self.ops.paged_attention(q, k_cache, v_cache, plan, scale)
