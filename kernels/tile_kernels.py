"""The Triton kernels of the shared-prefix attention backend, and exactly how each is launched.

One launch of `_tile_kernel` computes every tile of a step (see `tiles.py`): each chunk's private
tail (causal, offset by its history) and, for each shared segment, the stacked queries of every row
under it against the segment's KV blocks (no mask), prefill chunks and decodes alike. A program
handles one tile and one KV head; it packs the G query heads of that KV head next to each other, so
a tile is `block_m * G_pad` query vectors and even a decode tile is a matrix-matrix product.
Scores are scaled by `scale * log2(e)` and exponentiated with exp2, so every log-sum-exp here is in
base 2. `_merge_kernel` then combines the partials of rows seen by several tiles exactly:
`o = sum_i 2^(lse_i - M) o_i / sum_i 2^(lse_i - M)` with `M = max_i lse_i`.

`tile_launch` and `merge_launch` describe one layer's launches (kernel, grid, arguments, meta-parameters
and warps); `TritonAttention.run` launches exactly these, and tests/test_triton_compile.py compiles the
same descriptions for sm_90 and sm_80 without a GPU, so what CI checks is what a GPU runs.
Invariant: inputs are fp16, bf16 or fp32; dot products accumulate in fp32; the output has q's dtype.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from batchcli.kernels.tiles import TileConfig, TilePlan

# the interpreter pays per program, so it merges every (row, head) pair of a step in one
_INTERPRETER_MERGE_MAX = 1024
_MERGE_BLOCK = 32


def interpreted() -> bool:
    """Whether Triton runs its CPU interpreter (TRITON_INTERPRET=1) instead of compiling for a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


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


@dataclass(frozen=True, slots=True)
class Launch:
    """One kernel launch: `kernel[grid](*args, **meta)`; `meta` holds its constexpr parameters and num_warps."""

    kernel: object  # a triton JITFunction (an InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple  # the kernel's runtime parameters, in order
    meta: dict[str, object]

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)


def tile_launch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                part_o: torch.Tensor, part_lse: torch.Tensor, plan: TritonPlan, scale: float) -> Launch:
    """The tile kernel over every tile of the plan and every KV head: q [T, H, d], caches
    [num_blocks, bs, n_kv, d], out like q, partials [P, H, d] and [P, H] (float32)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, n_kv = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // n_kv
    cfg = plan.config
    args = (
        q, k_cache, v_cache, out, part_o, part_lse,
        plan.blk_off, plan.kv_lo, plan.kv_hi, plan.ent_row, plan.ent_limit, plan.ent_dst, plan.blocks,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        scale * math.log2(math.e),
    )
    meta = dict(
        NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=triton.next_power_of_2(group), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=interpreted() and q.dtype == torch.bfloat16,  # interpreter dot on bf16 is wrong: triton#11584
        num_warps=cfg.num_warps,
    )
    return Launch(_tile_kernel, (plan.tiles.num_tiles, n_kv), args, meta)


def merge_launch(out: torch.Tensor, part_o: torch.Tensor, part_lse: torch.Tensor, plan: TritonPlan) -> Launch | None:
    """The merge of every row seen by several tiles, all heads; None when no row has partials."""
    num_heads, head_dim = out.shape[1], out.shape[2]
    num_pairs = int(plan.tiles.merge_rows.size) * num_heads
    if not num_pairs:
        return None
    block_j = min(triton.next_power_of_2(num_pairs), _INTERPRETER_MERGE_MAX) if interpreted() else _MERGE_BLOCK
    args = (out, part_o, part_lse, plan.merge_rows, plan.merge_start, num_pairs, out.stride(0), out.stride(1))
    meta = dict(NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_J=block_j)
    return Launch(_merge_kernel, (triton.cdiv(num_pairs, block_j),), args, meta)
