"""Triton shared-prefix paged attention: the "triton" backend of `batchcli.engine.attention`.

`TritonAttention.plan` cuts a step into tiles once (`tiles.py`, on the host) and copies the plan to
the device; `run` checks one layer's arguments and launches the kernels of `tile_kernels.py` on it.
`default_config` picks the tiles and warps per model shape so that no configuration it can pick
spills registers or overflows shared memory on sm_80 or sm_90 (tests/test_triton_compile.py
compiles each for both targets). Invariant: the plan depends only on the step and the model's
shape, never on a layer's numbers, so every layer of a step reuses it.
"""

from __future__ import annotations

import math

import torch
import triton

from batchcli.engine.attention.backend import AttnShape
from batchcli.engine.attention.metadata import AttnMetadata
from batchcli.kernels.tile_kernels import TritonPlan, interpreted, merge_launch, tile_launch
from batchcli.kernels.tiles import TileConfig, check_host_metadata, plan_tiles

__all__ = ["TritonAttention", "TritonPlan", "default_config", "TileConfig"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_GROUP = 16
_DEVICE_ARRAYS = ("blk_off", "kv_lo", "kv_hi", "ent_row", "ent_limit", "ent_dst", "blocks", "merge_rows", "merge_start")


def default_config(shape: AttnShape, block_size: int, sm_count: int | None) -> TileConfig:
    """The tiles for a model's attention shape on a GPU with `sm_count` multiprocessors (None: the
    interpreter, which runs programs one by one, so KV ranges are never cut to fill a GPU).

    64 KV tokens per inner step; 64 packed query vectors per tile in fp16/bf16, with 8 warps from
    head_dim 128 on (4 spill registers there on sm_80); in fp32, whose dot products run on the FMA
    units with their operands in registers, 16 vectors and 8 warps (64 spill kilobytes). Every
    choice compiles without spilling for sm_80 and sm_90 at head_dim 16, 64 and 128
    (tests/test_triton_compile.py).
    """
    vectors, warps = (16, 8) if shape.dtype == torch.float32 else (64, 4 if shape.head_dim <= 64 else 8)
    return TileConfig(block_m=max(1, vectors // triton.next_power_of_2(shape.group)), block_n=max(64, block_size),
                      min_split_tokens=512, target_programs=0 if sm_count is None else 2 * sm_count,
                      num_warps=warps)


def _check_args(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TritonPlan, scale: float) -> None:
    """Shapes, dtypes, strides and devices; ValueError names the bad argument."""
    if q.ndim != 3:
        raise ValueError(f"q must be [T, H, d], got shape {tuple(q.shape)}")
    if k_cache.ndim != 4:
        raise ValueError(f"k_cache must be [num_blocks, block_size, n_kv, d], got shape {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"q dtype must be float16, bfloat16 or float32, got {q.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from q dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    if q.device.type != "cuda" and not interpreted():
        raise ValueError(f"q is on {q.device}: the Triton kernel needs CUDA (or TRITON_INTERPRET=1)")
    _, block_size, n_kv, head_dim = k_cache.shape
    if q.shape[2] != head_dim:
        raise ValueError(f"q head_dim {q.shape[2]} differs from k_cache head_dim {head_dim}")
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"k_cache head_dim must be a power of two from 16 to 256, got {head_dim}")
    if q.shape[1] % n_kv or not 1 <= q.shape[1] // n_kv <= _MAX_GROUP:
        raise ValueError(f"q heads {q.shape[1]} must be 1..{_MAX_GROUP} times k_cache's {n_kv} KV heads")
    if block_size != plan.block_size:
        raise ValueError(f"k_cache block_size {block_size} differs from meta.block_size {plan.block_size}")
    if q.shape[0] != plan.num_tokens:
        raise ValueError(f"q has {q.shape[0]} rows, meta.num_tokens is {plan.num_tokens}")
    if n_kv != plan.num_kv_heads:
        raise ValueError(f"k_cache has {n_kv} KV heads, the plan was made for {plan.num_kv_heads}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim, got strides {t.stride()}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")


class TritonAttention:
    """The "triton" backend for a model's attention shape (contract: attention.backend). `config`
    fixes the tiles (tests, benchmarks); by default `default_config`."""

    def __init__(self, shape: AttnShape, config: TileConfig | None = None) -> None:
        self.shape, self.config = shape, config

    def plan(self, meta: AttnMetadata) -> TritonPlan:
        """The step's tile plan, its arrays on the step's device, for every layer's `run`."""
        cfg = self.config or default_config(self.shape, meta.block_size, _sm_count(meta.device))
        group_pad = triton.next_power_of_2(self.shape.group)
        if cfg.block_m * group_pad < 16 or cfg.block_n < 16:
            raise ValueError(f"config {cfg} gives {cfg.block_m * group_pad} x {cfg.block_n} tiles; tl.dot needs 16 x 16 at least")
        check_host_metadata(meta.host, meta.num_tokens)
        n_kv = self.shape.num_kv_heads
        tiles = plan_tiles(meta.host, n_kv, cfg)
        tensors = {n: torch.from_numpy(getattr(tiles, n)).to(meta.device) for n in _DEVICE_ARRAYS}
        return TritonPlan(tiles, meta.num_tokens, meta.block_size, n_kv, cfg, **tensors)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TritonPlan,
            scale: float) -> torch.Tensor:
        """Shared-prefix paged attention: q [T, H, d], caches [num_blocks, bs, n_kv, d] -> [T, H, d] (q's dtype)."""
        _check_args(q, k_cache, v_cache, plan, scale)
        num_tokens, num_heads, head_dim = q.shape
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)  # [T, H, d]
        if num_tokens == 0:
            return out
        if plan.tiles.max_block >= k_cache.shape[0]:
            raise ValueError(f"meta names KV block {plan.tiles.max_block}, but the caches hold {k_cache.shape[0]} blocks")
        num_partials = plan.tiles.num_partials
        part_o = torch.empty((num_partials, num_heads, head_dim), dtype=torch.float32, device=q.device)  # [P, H, d]
        part_lse = torch.empty((num_partials, num_heads), dtype=torch.float32, device=q.device)  # [P, H]
        tile_launch(q, k_cache, v_cache, out, part_o, part_lse, plan, scale)()
        merge = merge_launch(out, part_o, part_lse, plan)
        if merge is not None:
            merge()
        return out


def _sm_count(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
