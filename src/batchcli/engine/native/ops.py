"""Typed torch-facing wrappers over the fused CPU ops of ops.cpp.

Each wrapper checks what the C code assumes (CPU, contiguous, one dtype of bfloat16 or float32,
sizes a multiple of the vector width) with a ValueError naming the argument, then passes raw
pointers; `NativeAttention` is the "native" attention backend over them, and `NativeKV` one layer's
cache in the native layout. The attention kernel is chosen once per `NativeOps`, by what the build
reports this CPU can run (AMX tiles, else AVX512-BF16 dot products, else float32 FMAs), never by a
timing. Invariant: the C code never sees a tensor these checks did not pass.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Literal

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
    "paged_attention": (_P, _P, _P, _P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _F, _I),
}
Kernel = Literal["fma", "dot", "amx"]
KERNELS: tuple[Kernel, ...] = ("fma", "dot", "amx")  # ops.cpp's enum Kernel, in its order; best last
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


@dataclass(frozen=True, slots=True)
class NativeKV:
    """One layer's KV cache in the native layout (ops.cpp's `Cache`), viewed over the engine's
    [2, blocks, bs, n_kv, d] storage (same size, other order):
      - float32: keys [blocks, n_kv, d, bs], values [blocks, bs, n_kv, d];
      - bfloat16: keys [blocks, n_kv, d/2, bs, 2], values [blocks, n_kv, bs/2, d, 2] (pairs along each
        product's reduction axis: the operand layout of AVX512-BF16 and AMX, read in place)."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def over(cls, layer_kv: torch.Tensor) -> NativeKV:
        _, blocks, bs, n_kv, d = layer_kv.shape
        if layer_kv.dtype == torch.bfloat16:
            return cls(layer_kv[0].view(blocks, n_kv, d // 2, bs, 2), layer_kv[1].view(blocks, n_kv, bs // 2, d, 2))
        return cls(layer_kv[0].view(blocks, n_kv, d, bs), layer_kv[1])

    @classmethod
    def from_standard(cls, k_cache: torch.Tensor, v_cache: torch.Tensor) -> NativeKV:
        """Caches in the standard layout [blocks, bs, n_kv, d] copied into the native one."""
        blocks, bs, n_kv, d = k_cache.shape
        if k_cache.dtype == torch.bfloat16:
            keys = k_cache.view(blocks, bs, n_kv, d // 2, 2).permute(0, 2, 3, 1, 4)  # [blocks, n_kv, d/2, bs, 2]
            values = v_cache.view(blocks, bs // 2, 2, n_kv, d).permute(0, 3, 1, 4, 2)  # [blocks, n_kv, bs/2, d, 2]
            return cls(keys.contiguous(), values.contiguous())
        return cls(k_cache.permute(0, 2, 3, 1).contiguous(), v_cache.contiguous())  # keys [blocks, n_kv, d, bs]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(blocks, block_size, n_kv, head_dim)."""
        if self.keys.dim() == 5:
            blocks, n_kv, half, bs, _ = self.keys.shape
            return blocks, bs, n_kv, 2 * half
        blocks, n_kv, d, bs = self.keys.shape
        return blocks, bs, n_kv, d


def available_kernels(native: NativeLib) -> tuple[Kernel, ...]:
    """The attention kernels this build runs for bfloat16 on this machine (float32 always runs "fma")."""
    fn = native.lib.batchllm_attention_kernels
    fn.argtypes, fn.restype = (), ctypes.c_int64
    bits = fn()
    return tuple(k for i, k in enumerate(KERNELS) if bits >> i & 1)


class NativeOps:
    """The fused ops bound for one dtype; `kernel` the attention kernel (default: the best this CPU runs)."""

    def __init__(self, native: NativeLib, dtype: torch.dtype, kernel: Kernel | None = None) -> None:
        if dtype not in _SUFFIX:
            raise ValueError(f"the fused ops run bfloat16 or float32, not {dtype}")
        runs = available_kernels(native) if dtype == torch.bfloat16 else ("fma",)
        if kernel is not None and kernel not in runs:
            raise ValueError(f"attention kernel {kernel!r} does not run {dtype} on this machine (it runs {', '.join(runs)})")
        self.dtype = dtype
        self.kernel: Kernel = kernel or runs[-1]
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
                      slots: torch.Tensor, kv: NativeKV, n_q: int) -> torch.Tensor:
        """qkv [T, H + 2 n_kv, d]; rotates q (returned, [T, H, d]) and k, writes k and v to their slots.

        positions index cos/sin [P, d/2]; slots int64 [T].
        """
        for name, t in (("qkv", qkv), ("cos", cos), ("sin", sin), ("keys", kv.keys), ("values", kv.values)):
            _check(name, t, self.dtype)
        for name, t in (("positions", positions), ("slots", slots)):
            _check(name, t, torch.int64)
        tokens, heads, d = qkv.shape
        n_kv = (heads - n_q) // 2
        _, bs, cache_kv, cache_d = kv.shape
        if (cache_kv, cache_d) != (n_kv, d) or cos.shape[1] != d // 2:
            raise ValueError(f"rope_store_kv: qkv {tuple(qkv.shape)} with {n_q} q heads does not fit "
                             f"a cache of {cache_kv} KV heads of {cache_d}, cos {tuple(cos.shape)}")
        q = qkv.new_empty(tokens, n_q, d)
        self._fn["rope_store_kv"](_ptr(qkv), _ptr(cos), _ptr(sin), _ptr(positions), _ptr(slots), _ptr(q),
                                  _ptr(kv.keys), _ptr(kv.values), tokens, n_q, n_kv, d, bs)
        return q

    def paged_attention(self, q: torch.Tensor, kv: NativeKV, work: AttentionWork, scale: float) -> torch.Tensor:
        """q [T, H, d] against each chunk's key blocks (see AttentionWork) -> [T, H, d]."""
        for name, t in (("q", q), ("keys", kv.keys), ("values", kv.values)):
            _check(name, t, self.dtype)
        tokens, n_q, d = q.shape
        _, bs, n_kv, _ = kv.shape
        out = torch.empty_like(q)
        self._fn["paged_attention"](_ptr(q), _ptr(kv.keys), _ptr(kv.values), _ptr(out), work.addresses[0], len(work.items),
                                    work.max_vectors, *work.addresses[1:], n_q, n_kv, d, bs, scale,
                                    KERNELS.index(self.kernel))
        return out


class NativeAttention:
    """The "native" backend: plan = the step's work list, run = the paged kernel over a cache in the
    native layout (`NativeKV`; rope_store_kv writes it so)."""

    def __init__(self, ops: NativeOps, num_kv_heads: int, group: int) -> None:
        self.ops, self.num_kv_heads, self.group = ops, num_kv_heads, group

    def plan(self, meta: AttnMetadata) -> AttentionWork:
        return attention_work(meta.host, self.num_kv_heads, self.group)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttentionWork,
            scale: float) -> torch.Tensor:
        """k_cache, v_cache: one layer's `NativeKV.keys` and `.values`."""
        return self.ops.paged_attention(q, NativeKV(k_cache, v_cache), plan, scale)
