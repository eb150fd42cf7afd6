"""Attention dispatch: the one place that picks a backend for shared-prefix paged attention.

Every backend has the signature `fn(q, k_cache, v_cache, meta, scale) -> out` with q `[T, H, d]`,
caches `[num_blocks, block_size, n_kv, d]` (this step's K/V already written) and out `[T, H, d]` in
q's dtype. Backends: "torch" (batched torch ops, any device), "triton" (CUDA kernel in
batchcli.kernels), "gather" (no shared-prefix decomposition; the ablation baseline) and "reference"
(float32 loops, tests only).
"""

from __future__ import annotations

from typing import Callable

import torch

from batchcli.engine.attention.metadata import AttnMetadata, build_metadata

__all__ = ["AttnMetadata", "build_metadata", "write_kv", "attention", "resolve_backend", "BACKENDS"]

Backend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttnMetadata, float], torch.Tensor]
BACKENDS = ("auto", "torch", "triton", "gather", "reference")


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata) -> None:
    """Store this step's K/V rows `[T, n_kv, d]` into their cache slots."""
    n_kv, d = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))


def resolve_backend(name: str, device: torch.device) -> str:
    """Map "auto" to the best backend for the device; reject unknown names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name == "triton" and device.type != "cuda" and not _triton_interpreted():
        raise ValueError("attention backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for tests)")
    return name


def _triton_interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def get_backend(name: str) -> Backend:
    if name == "torch":
        from batchcli.engine.attention.torch_backend import torch_attention

        return torch_attention
    if name == "triton":
        from batchcli.kernels.shared_prefix_attention import triton_attention

        return triton_attention
    if name == "gather":
        from batchcli.engine.attention.gather_backend import gather_attention

        return gather_attention
    if name == "reference":
        from batchcli.engine.attention.reference import reference_attention

        def ref(q, k_cache, v_cache, meta, scale):  # noqa: ANN001 - same signature as Backend
            return reference_attention(q, k_cache, v_cache, meta, scale).to(q.dtype)

        return ref
    raise ValueError(f"unknown attention backend {name!r}")


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    meta: AttnMetadata, scale: float, backend: Backend,
) -> torch.Tensor:
    """Write this step's K/V, then attend: q [T, H, d], k/v [T, n_kv, d] -> [T, H, d]."""
    write_kv(k, v, k_cache, v_cache, meta)
    return backend(q, k_cache, v_cache, meta, scale)
