"""Tile planning for the shared-prefix attention kernel: which tiles exist in one step (numpy only).

A tile is (query entries, one KV source, a KV token range). Its entries are up to `block_m` query rows
with, for each, the exclusive KV position `limit` it may see in that source:
  - private tiles: consecutive rows of one chunk against the chunk's own blocks, `limit` = the row's
    private position + 1 (causal, offset by the chunk's history);
  - shared tiles: rows listed under one segment (`seg_q_rows`) against the segment's blocks,
    `limit` = the segment length (no mask).
A KV range longer than the split size is cut into several tiles (whole `block_n` steps), so a long
segment under few rows is read by many programs at once and still fills the GPU. Every entry yields one partial (output, log-sum-exp).

Invariant: a row's partials together cover exactly the KV the row may see, once each. A row with one
partial is written straight to the output (`dst` = -1); the partials of every other row occupy the
contiguous slots `merge_start[r] .. merge_start[r + 1] - 1` of the partial buffers, merged exactly.
The plan is built once per step (TritonAttention.plan) and read by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from batchcli.engine.attention.metadata import HostMeta


@dataclass(frozen=True, slots=True)
class TileConfig:
    block_m: int  # query rows per tile; each row brings the G query heads of one KV head
    block_n: int  # KV tokens per inner step of the kernel; a multiple of the cache block size
    min_split_tokens: int  # never cut a tile's KV range finer than this
    target_programs: int  # programs to spread the step's KV work over (~2 per SM); 0 never cuts
    num_warps: int = 4  # warps per program: the kernel's launch option, not read by the planning here

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"TileConfig.{name} must be a power of two >= 1, got {value}")
        if self.min_split_tokens < 1:
            raise ValueError(f"TileConfig.min_split_tokens must be >= 1, got {self.min_split_tokens}")
        if self.target_programs < 0:
            raise ValueError(f"TileConfig.target_programs must be >= 0, got {self.target_programs}")


@dataclass(slots=True)
class TilePlan:
    """Host arrays describing every tile of one step (NT tiles, R merged rows, P partial slots)."""

    blk_off: np.ndarray  # int32 [NT]: start of the tile's block list in `blocks`
    kv_lo: np.ndarray  # int32 [NT]: first KV token of the tile (a multiple of block_n)
    kv_hi: np.ndarray  # int32 [NT]: one past the last KV token of the tile
    ent_row: np.ndarray  # int32 [NT, block_m]: query row per entry, -1 past the tile's entries
    ent_limit: np.ndarray  # int32 [NT, block_m]: exclusive KV position the entry may see
    ent_dst: np.ndarray  # int32 [NT, block_m]: partial slot, or -1 for a direct write to the output
    blocks: np.ndarray  # int32 [seg table size + private table size]: both block tables, flattened
    merge_rows: np.ndarray  # int32 [R]: rows whose partials must be merged
    merge_start: np.ndarray  # int32 [R + 1]: their partial slots, contiguous per row
    max_block: int  # largest block id any tile reads (-1 when none)

    @property
    def num_tiles(self) -> int:
        return int(self.kv_lo.shape[0])

    @property
    def num_partials(self) -> int:
        return int(self.merge_start[-1])


def check_host_metadata(host: HostMeta, num_tokens: int) -> None:
    """Index-range checks on the step metadata; ValueError names the bad field and value."""
    block_size = host.block_size
    q_len, ctx_len, q_start = host.q_len, host.ctx_len, host.q_start
    if q_start[-1] != num_tokens:
        raise ValueError(f"meta.q_start ends at {int(q_start[-1])}, but meta.num_tokens is {num_tokens}")
    bad = np.flatnonzero((q_len < 1) | (ctx_len < q_len))
    if bad.size:
        s = int(bad[0])
        raise ValueError(f"meta chunk {s}: q_len {int(q_len[s])} must be >= 1 and <= ctx_len {int(ctx_len[s])}")
    need = -(-ctx_len // block_size)
    if need.size and need.max() > host.block_table.shape[1]:
        raise ValueError(f"meta.block_table has {host.block_table.shape[1]} columns, a chunk needs {int(need.max())}")
    seg_len = host.seg_len
    bad = np.flatnonzero((seg_len < 1) | (seg_len % block_size != 0))
    if bad.size:
        raise ValueError(f"meta.seg_len[{int(bad[0])}] = {int(seg_len[bad[0]])} is not a positive multiple of block size {block_size}")
    if seg_len.size and seg_len.max() // block_size > host.seg_block_table.shape[1]:
        raise ValueError(f"meta.seg_block_table has {host.seg_block_table.shape[1]} columns, a segment needs {int(seg_len.max()) // block_size}")
    rows = host.seg_q_rows
    if rows.size and (rows.min() < 0 or rows.max() >= num_tokens):
        raise ValueError(f"meta.seg_q_rows holds rows outside 0..{num_tokens - 1}: {int(rows.min())}..{int(rows.max())}")


def _row_tiles(counts: np.ndarray, block_m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut runs of `counts[i]` entries into tiles of block_m: (run index, first entry, entries) per tile."""
    per_run = -(-counts // block_m)  # [runs]
    run = np.repeat(np.arange(counts.shape[0]), per_run)  # [tiles]
    first_tile = np.cumsum(per_run) - per_run  # [runs]
    first = (np.arange(run.shape[0]) - first_tile[run]) * block_m  # [tiles]
    return run, first, np.minimum(counts[run] - first, block_m)


def plan_tiles(host: HostMeta, n_kv: int, cfg: TileConfig) -> TilePlan:
    """All tiles of one step, their entries and partial slots, from the host metadata."""
    block_size = host.block_size
    if cfg.block_n % block_size:
        raise ValueError(f"TileConfig.block_n {cfg.block_n} is not a multiple of block size {block_size}")
    m = np.arange(cfg.block_m)  # [block_m]
    seg_table, priv_table = host.seg_block_table, host.block_table
    # private tiles: rows q_start[s] + first + m, seeing private positions < history + first + m + 1
    s, first, n = _row_tiles(host.q_len.astype(np.int64), cfg.block_m)
    hist = (host.ctx_len - host.q_len).astype(np.int64)[s]  # [tiles]
    valid = m[None, :] < n[:, None]  # [tiles, block_m]
    p_row = np.where(valid, host.q_start[s][:, None] + first[:, None] + m, -1)  # [tiles, block_m]
    p_limit = np.where(valid, hist[:, None] + first[:, None] + m + 1, 0)  # [tiles, block_m]
    p_off = seg_table.size + s * priv_table.shape[1]  # [tiles]
    p_len = hist + first + n  # [tiles]: the last row's limit
    # shared tiles: stacked rows of every chunk under segment g, all seeing seg_len[g] tokens
    seg_len = host.seg_len.astype(np.int64)
    g, first, n = _row_tiles(np.diff(host.seg_q_start).astype(np.int64), cfg.block_m)
    valid = m[None, :] < n[:, None]  # [tiles, block_m]
    idx = np.where(valid, host.seg_q_start[g][:, None] + first[:, None] + m, 0)  # [tiles, block_m]
    g_row = np.where(valid, host.seg_q_rows[idx] if idx.size else idx, -1)  # [tiles, block_m]
    g_limit = np.where(valid, seg_len[g][:, None], 0)  # [tiles, block_m]

    rows = np.concatenate([g_row, p_row]).reshape(-1, cfg.block_m)  # [base tiles, block_m]
    limit = np.concatenate([g_limit, p_limit]).reshape(-1, cfg.block_m)  # [base tiles, block_m]
    off = np.concatenate([g * seg_table.shape[1], p_off])  # [base tiles]
    length = np.concatenate([seg_len[g], p_len])  # [base tiles]
    used = np.concatenate([seg_table[g].ravel(), _used_private_blocks(host, block_size)])
    return _split_and_assign(rows, limit, off, length, n_kv, cfg,
                             np.concatenate([seg_table.ravel(), priv_table.ravel()]),
                             int(used.max()) if used.size else -1, int(host.q_start[-1]))


def _used_private_blocks(host: HostMeta, block_size: int) -> np.ndarray:
    need = -(-host.ctx_len.astype(np.int64) // block_size)  # [S]
    mask = np.arange(host.block_table.shape[1])[None, :] < need[:, None]  # [S, width]
    return host.block_table[mask]


def _split_size(length: np.ndarray, n_kv: int, cfg: TileConfig) -> int:
    """KV tokens per tile: the mean KV work per program at `target_programs`, at least min_split_tokens.

    Tiles are memory-bound on their KV range, so a tile longer than the mean per-program share would
    leave most of the GPU idle while it finishes (a long shared segment under few decode rows).
    """
    longest = int(length.max()) if length.size else 0
    if cfg.target_programs == 0 or longest == 0:
        return max(longest, 1)
    per_head = max(cfg.target_programs // n_kv, 1)  # programs per KV head
    share = -(-int(length.sum()) // per_head)
    split = min(max(share, cfg.min_split_tokens), longest)
    return -(-split // cfg.block_n) * cfg.block_n


def _split_and_assign(
    rows: np.ndarray, limit: np.ndarray, off: np.ndarray, length: np.ndarray, n_kv: int, cfg: TileConfig,
    blocks: np.ndarray, max_block: int, num_tokens: int,
) -> TilePlan:
    split = _split_size(length, n_kv, cfg)
    pieces = np.maximum(-(-length // split), 1)  # [base tiles]
    base = np.repeat(np.arange(length.shape[0]), pieces)  # [NT]
    piece = np.arange(base.shape[0]) - (np.cumsum(pieces) - pieces)[base]  # [NT]
    kv_lo = piece * split  # [NT]
    kv_hi = np.minimum(kv_lo + split, length[base])  # [NT]
    ent_row, ent_limit = rows[base], limit[base]  # [NT, block_m]

    # partial slots: rows seen by more than one entry get consecutive slots, in tile order
    flat = ent_row.ravel()  # [NT * block_m]
    live = np.flatnonzero(flat >= 0)  # entries that exist
    counts = np.bincount(flat[live], minlength=num_tokens)  # [T]
    if (counts == 0).any():
        raise AssertionError(f"row {int(np.flatnonzero(counts == 0)[0])} is covered by no tile")
    merged = counts > 1  # [T]
    start = np.zeros(num_tokens + 1, dtype=np.int64)
    np.cumsum(np.where(merged, counts, 0), out=start[1:])
    order = live[np.argsort(flat[live], kind="stable")]  # live entries grouped by row
    run_start = np.cumsum(counts) - counts  # [T]: first position of each row in `order`
    rank = np.arange(order.shape[0]) - run_start[flat[order]]  # [live]
    dst = np.full(flat.shape, -1, dtype=np.int64)
    dst[order] = np.where(merged[flat[order]], start[flat[order]] + rank, -1)
    merge_rows = np.flatnonzero(merged)
    merge_start = np.concatenate([start[merge_rows], start[-1:]])
    i32 = np.int32
    return TilePlan(
        blk_off=off[base].astype(i32), kv_lo=kv_lo.astype(i32), kv_hi=kv_hi.astype(i32),
        ent_row=ent_row.astype(i32), ent_limit=ent_limit.astype(i32), ent_dst=dst.reshape(ent_row.shape).astype(i32),
        blocks=blocks.astype(i32), merge_rows=merge_rows.astype(i32), merge_start=merge_start.astype(i32),
        max_block=max_block,
    )
