"""Triton shared-prefix paged attention: the "triton" backend of `batchcli.engine.attention`.

One launch of `_tile_kernel` computes every tile of a step (see `tiles.py`): each chunk's private
tail (causal, offset by its history) and, for each shared segment, the stacked queries of every row
under it against the segment's KV blocks (no mask), prefill chunks and decodes alike. A program
handles one tile and one KV head; it packs the G query heads of that KV head next to each other, so
a tile is `block_m * G_pad` query vectors and even a decode tile is a matrix-matrix product.
Scores are scaled by `scale * log2(e)` and exponentiated with exp2, so every log-sum-exp here is in
base 2. `_merge_kernel` then combines the partials of rows seen by several tiles exactly:
`o = sum_i 2^(lse_i - M) o_i / sum_i 2^(lse_i - M)` with `M = max_i lse_i`.

Invariant: inputs are fp16/bf16 (fp32 under the interpreter); dot products accumulate in fp32; the
output has q's dtype. The tile plan is built once per step (`TritonAttention.plan`) and read by
every layer's `run`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from batchcli.engine.attention.metadata import AttnMetadata
from batchcli.kernels.tiles import TileConfig, TilePlan, check_host_metadata, plan_tiles

__all__ = ["TritonAttention", "TritonPlan", "default_config", "TileConfig"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_GROUP = 16


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation; UPCAST multiplies in fp32 (bf16 x bf16 products are exact there)."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def _tile_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, part_o_ptr, part_lse_ptr,
    blk_off_ptr, kv_lo_ptr, kv_hi_ptr, ent_row_ptr, ent_limit_ptr, ent_dst_ptr, blocks_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    scale_log2,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    i = tl.arange(0, BLOCK_M * GROUP_PAD)  # packed query vector: entry i // GROUP_PAD, head i % GROUP_PAD
    gg = i % GROUP_PAD
    head = kv_head * GROUP + gg  # [BM]
    entry = tile * BLOCK_M + i // GROUP_PAD  # [BM]
    row = tl.load(ent_row_ptr + entry)  # [BM]
    limit = tl.load(ent_limit_ptr + entry)  # [BM]
    dst = tl.load(ent_dst_ptr + entry)  # [BM]
    live = (row >= 0) & (gg < GROUP)  # [BM]
    d = tl.arange(0, HEAD_DIM)
    q_off = row.to(tl.int64) * stride_qt + head * stride_qh  # [BM]
    q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=live[:, None], other=0.0)  # [BM, D]

    blk_off = tl.load(blk_off_ptr + tile)
    kv_lo = tl.load(kv_lo_ptr + tile)
    kv_hi = tl.load(kv_hi_ptr + tile)
    m_i = tl.full([BLOCK_M * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_M * GROUP_PAD, HEAD_DIM], tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)  # [BN]
        in_range = pos < kv_hi
        blk = tl.load(blocks_ptr + blk_off + pos // BLOCK_SIZE, mask=in_range, other=0).to(tl.int64)  # [BN]
        tok = (pos % BLOCK_SIZE).to(tl.int64)  # [BN]
        k_off = blk * stride_kb + tok * stride_ks + kv_head * stride_kh  # [BN]
        k = tl.load(k_ptr + k_off[:, None] + d[None, :], mask=in_range[:, None], other=0.0)  # [BN, D]
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * scale_log2  # [BM, BN]
        s = tl.where(in_range[None, :] & (pos[None, :] < limit[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # [BM]
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet stay at 0
        alpha = tl.exp2(m_i - m_safe)  # [BM]
        p = tl.exp2(s - m_safe[:, None])  # [BM, BN]
        l_i = l_i * alpha + tl.sum(p, 1)
        v_off = blk * stride_vb + tok * stride_vs + kv_head * stride_vh  # [BN]
        v = tl.load(v_ptr + v_off[:, None] + d[None, :], mask=in_range[:, None], other=0.0)  # [BN, D]
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)  # [BM, D]
        m_i = m_new

    seen = l_i > 0  # a causal piece past a row's position leaves it empty: lse = -inf, o = 0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]  # [BM, D]
    lse = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))  # [BM], base 2
    o_off = row.to(tl.int64) * stride_ot + head * stride_oh  # [BM]
    direct = live & (dst < 0)
    tl.store(out_ptr + o_off[:, None] + d[None, :], o.to(out_ptr.dtype.element_ty), mask=direct[:, None])
    slot = dst.to(tl.int64) * NUM_HEADS + head  # [BM]
    partial = live & (dst >= 0)
    tl.store(part_o_ptr + slot[:, None] * HEAD_DIM + d[None, :], o, mask=partial[:, None])
    tl.store(part_lse_ptr + slot, lse, mask=partial)


@triton.jit
def _merge_kernel(
    out_ptr, part_o_ptr, part_lse_ptr, merge_rows_ptr, merge_start_ptr, num_pairs, stride_ot, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_J: tl.constexpr,
):
    j = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)  # (merged row, head) pairs
    live = j < num_pairs
    r = j // NUM_HEADS  # [BJ]
    head = j % NUM_HEADS  # [BJ]
    row = tl.load(merge_rows_ptr + r, mask=live, other=0).to(tl.int64)  # [BJ]
    lo = tl.load(merge_start_ptr + r, mask=live, other=0).to(tl.int64)  # [BJ]
    count = tl.load(merge_start_ptr + r + 1, mask=live, other=0) - lo  # [BJ]
    d = tl.arange(0, HEAD_DIM)
    m = tl.full([BLOCK_J], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_J], tl.float32)
    acc = tl.zeros([BLOCK_J, HEAD_DIM], tl.float32)
    for k in range(0, tl.max(count, 0)):
        has = k < count  # [BJ]
        idx = (lo + k) * NUM_HEADS + head  # [BJ]
        lse = tl.load(part_lse_ptr + idx, mask=has, other=float("-inf"))  # [BJ]
        o = tl.load(part_o_ptr + idx[:, None] * HEAD_DIM + d[None, :], mask=has[:, None], other=0.0)  # [BJ, D]
        m_new = tl.maximum(m, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        w = tl.exp2(lse - m_safe)
        l = l * alpha + w
        acc = acc * alpha[:, None] + o * w[:, None]
        m = m_new
    o = acc / tl.where(l > 0, l, 1.0)[:, None]  # [BJ, D]
    o_off = row * stride_ot + head * stride_oh  # [BJ]
    tl.store(out_ptr + o_off[:, None] + d[None, :], o.to(out_ptr.dtype.element_ty), mask=live[:, None])


@dataclass(frozen=True, slots=True)
class TritonPlan:
    """A step's TilePlan with its arrays copied to the step's device (same names as TilePlan's fields)."""

    tiles: TilePlan
    num_tokens: int
    block_size: int
    num_kv_heads: int
    config: TileConfig
    blk_off: torch.Tensor
    kv_lo: torch.Tensor
    kv_hi: torch.Tensor
    ent_row: torch.Tensor
    ent_limit: torch.Tensor
    ent_dst: torch.Tensor
    blocks: torch.Tensor
    merge_rows: torch.Tensor
    merge_start: torch.Tensor


_DEVICE_ARRAYS = ("blk_off", "kv_lo", "kv_hi", "ent_row", "ent_limit", "ent_dst", "blocks", "merge_rows", "merge_start")


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def default_config(group: int, block_size: int, device: torch.device) -> TileConfig:
    """Tiles of 64 packed query vectors and 64 KV tokens; KV work spread over ~2 programs per SM."""
    group_pad = triton.next_power_of_2(group)
    if device.type == "cuda":
        programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        programs = 0  # the interpreter runs programs one by one: fewer, bigger tiles are faster
    return TileConfig(block_m=max(1, 64 // group_pad), block_n=max(64, block_size),
                      min_split_tokens=512, target_programs=programs)


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
    if q.device.type != "cuda" and not _interpreted():
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
    """The "triton" backend for a model's KV heads and query heads per KV head (contract:
    attention.backend). `config` fixes the tiles (tests, benchmarks); by default `default_config`."""

    def __init__(self, num_kv_heads: int, group: int, config: TileConfig | None = None) -> None:
        self.num_kv_heads, self.group, self.config = num_kv_heads, group, config

    def plan(self, meta: AttnMetadata) -> TritonPlan:
        """The step's tile plan, its arrays on the step's device, for every layer's `run`."""
        cfg = self.config or default_config(self.group, meta.block_size, meta.device)
        group_pad = triton.next_power_of_2(self.group)
        if cfg.block_m * group_pad < 16 or cfg.block_n < 16:
            raise ValueError(f"config {cfg} gives {cfg.block_m * group_pad} x {cfg.block_n} tiles; tl.dot needs 16 x 16 at least")
        check_host_metadata(meta.host, meta.num_tokens)
        tiles = plan_tiles(meta.host, self.num_kv_heads, cfg)
        tensors = {n: torch.from_numpy(getattr(tiles, n)).to(meta.device) for n in _DEVICE_ARRAYS}
        return TritonPlan(tiles, meta.num_tokens, meta.block_size, self.num_kv_heads, cfg, **tensors)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TritonPlan,
            scale: float) -> torch.Tensor:
        """Shared-prefix paged attention: q [T, H, d], caches [num_blocks, bs, n_kv, d] -> [T, H, d] (q's dtype)."""
        _check_args(q, k_cache, v_cache, plan, scale)
        num_tokens, num_heads, head_dim = q.shape
        num_blocks, block_size, n_kv, _ = k_cache.shape
        group = num_heads // n_kv
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)  # [T, H, d]
        if num_tokens == 0:
            return out
        if plan.tiles.max_block >= num_blocks:
            raise ValueError(f"meta names KV block {plan.tiles.max_block}, but the caches hold {num_blocks} blocks")
        cfg = plan.config
        num_partials = plan.tiles.num_partials
        part_o = torch.empty((num_partials, num_heads, head_dim), dtype=torch.float32, device=q.device)  # [P, H, d]
        part_lse = torch.empty((num_partials, num_heads), dtype=torch.float32, device=q.device)  # [P, H]
        precision = "ieee" if q.dtype == torch.float32 else "tf32"
        _tile_kernel[(plan.tiles.num_tiles, n_kv)](
            q, k_cache, v_cache, out, part_o, part_lse,
            plan.blk_off, plan.kv_lo, plan.kv_hi, plan.ent_row, plan.ent_limit, plan.ent_dst, plan.blocks,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            scale * math.log2(math.e),
            NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=triton.next_power_of_2(group), HEAD_DIM=head_dim,
            BLOCK_SIZE=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PRECISION=precision,
            UPCAST=_interpreted() and q.dtype == torch.bfloat16,  # interpreter dot on bf16 is wrong: triton#11584
        )
        num_pairs = int(plan.tiles.merge_rows.size) * num_heads
        if num_pairs:
            # the interpreter pays per program, so it merges everything in one
            block_j = min(triton.next_power_of_2(num_pairs), 1024) if _interpreted() else 32
            _merge_kernel[(triton.cdiv(num_pairs, block_j),)](
                out, part_o, part_lse, plan.merge_rows, plan.merge_start, num_pairs, out.stride(0), out.stride(1),
                NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_J=block_j,
            )
        return out
