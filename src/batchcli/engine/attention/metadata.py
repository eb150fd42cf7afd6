"""Attention metadata: built once per step from a StepBatch, read by every backend's `plan`.

Layout of the flat token batch: the query tokens of chunk s are rows `q_start[s]:q_start[s+1]`
(chunks in StepBatch order). Each row attends to
  (a) every shared segment g with the row in `segment_rows(g)`: all `seg_len[g]` tokens, no mask;
  (b) its own chunk's private KV, causally: query i of chunk s sits at private position
      `ctx_len[s] - q_len[s] + i` and sees private positions `0 ..` that position.
KV lives in a paged cache `[num_blocks, block_size, n_kv, head_dim]`; slot = block * block_size + offset.
Invariant: `HostMeta` and the tensors of `AttnMetadata` hold the same numbers; neither changes after
the build (both are frozen), so a backend's plan of them stays valid for every layer of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from batchcli.engine.step import StepBatch


def block_slots(blocks: np.ndarray, block_size: int, n: int) -> np.ndarray:
    """Cache slots of tokens 0..n-1 of a block list: int64 [n]."""
    used = blocks[: -(-n // block_size)].astype(np.int64)  # [ceil(n / bs)]
    return (used[:, None] * block_size + np.arange(block_size)).reshape(-1)[:n]  # [n]


@dataclass(frozen=True, slots=True)
class HostMeta:
    """The step's metadata as numpy arrays, for planning on the host (S chunks, G segments, T rows)."""

    block_size: int
    q_start: np.ndarray  # int32 [S + 1]
    q_len: np.ndarray  # int32 [S]
    ctx_len: np.ndarray  # int32 [S]: private KV length including this step's tokens
    block_table: np.ndarray  # int32 [S, max_private_blocks], padded with 0
    slot_mapping: np.ndarray  # int64 [T]: cache slot where each row's new K/V is written
    seg_len: np.ndarray  # int32 [G]: tokens, whole blocks
    seg_block_table: np.ndarray  # int32 [G, max_seg_blocks], padded with 0
    seg_q_start: np.ndarray  # int32 [G + 1]
    seg_q_rows: np.ndarray  # int64: rows attending segment g are seg_q_rows[seg_q_start[g]:seg_q_start[g+1]], ascending

    @property
    def num_seqs(self) -> int:
        return int(self.q_len.shape[0])

    @property
    def num_segments(self) -> int:
        return int(self.seg_len.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.q_start[-1])

    def chunk_rows(self, s: int) -> np.ndarray:
        """Rows of chunk s: int64 [q_len[s]]."""
        return np.arange(self.q_start[s], self.q_start[s + 1], dtype=np.int64)

    def segment_rows(self, g: int) -> np.ndarray:
        """Rows attending segment g, ascending."""
        return self.seg_q_rows[self.seg_q_start[g] : self.seg_q_start[g + 1]]

    def chunk_segments(self) -> list[tuple[int, ...]]:
        """Per chunk, the segments (indices into the segment arrays) its rows attend, outermost first."""
        chunk_of_row = np.repeat(np.arange(self.num_seqs), self.q_len)  # [T]
        per_chunk: list[list[int]] = [[] for _ in range(self.num_seqs)]
        for g in range(self.num_segments):
            for s in np.unique(chunk_of_row[self.segment_rows(g)]):
                per_chunk[int(s)].append(g)
        return [tuple(x) for x in per_chunk]

    def segment_slots(self, g: int) -> np.ndarray:
        """Cache slots of segment g's tokens: int64 [seg_len[g]]."""
        return block_slots(self.seg_block_table[g], self.block_size, int(self.seg_len[g]))

    def private_slots(self, s: int, n: int) -> np.ndarray:
        """Cache slots of chunk s's private positions 0..n-1: int64 [n]."""
        return block_slots(self.block_table[s], self.block_size, n)


@dataclass(frozen=True, slots=True)
class AttnMetadata:
    """The same numbers as `host`, as tensors on the step's device (for the model and device-side plans)."""

    host: HostMeta
    slot_mapping: torch.Tensor  # int64 [T]
    q_start: torch.Tensor  # int32 [S + 1]
    q_len: torch.Tensor  # int32 [S]
    ctx_len: torch.Tensor  # int32 [S]
    block_table: torch.Tensor  # int32 [S, max_private_blocks]
    seg_len: torch.Tensor  # int32 [G]
    seg_block_table: torch.Tensor  # int32 [G, max_seg_blocks]
    seg_q_start: torch.Tensor  # int32 [G + 1]
    seg_q_rows: torch.Tensor  # int64 [sum of rows]

    @property
    def block_size(self) -> int:
        return self.host.block_size

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @property
    def num_seqs(self) -> int:
        return self.host.num_seqs

    @property
    def num_segments(self) -> int:
        return self.host.num_segments

    @property
    def device(self) -> torch.device:
        return self.slot_mapping.device


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x.index_select(0, index)` for a contiguous x, moving each row as int64 words when its bytes
    allow: CPU index_select copies bf16 elements one by one, ~3x slower than the same bytes as int64."""
    row_bytes = x[0].numel() * x.element_size() if x.shape[0] else 0
    if x.device.type != "cpu" or not x.is_contiguous() or row_bytes % 8:
        return x.index_select(0, index)
    words = x.view(x.shape[0], -1).view(torch.int64)  # [rows, row_bytes / 8]
    return words.index_select(0, index).view(x.dtype).view(len(index), *x.shape[1:])


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata) -> None:
    """Store this step's K/V rows `[T, n_kv, d]` into their cache slots."""
    n_kv, d = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))


def _pad_table(rows: list[tuple[int, ...]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    table = np.zeros((len(rows), max(width, 1)), dtype=np.int32)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    return table


def build_metadata(step: StepBatch, block_size: int, device: torch.device | str = "cpu") -> AttnMetadata:
    """Turn a StepBatch into the arrays and tensors every attention backend plans from."""
    chunks = step.chunks
    q_len = np.fromiter((len(c.token_ids) for c in chunks), dtype=np.int32, count=len(chunks))
    ctx_len = np.fromiter((c.private_len for c in chunks), dtype=np.int32, count=len(chunks))
    q_start = np.zeros(len(chunks) + 1, dtype=np.int32)
    np.cumsum(q_len, out=q_start[1:])
    block_table = _pad_table([c.block_ids for c in chunks])  # [S, max_blocks]
    total = int(q_start[-1])

    # private position of every row, then its cache slot through the chunk's block table
    chunk_of_row = np.repeat(np.arange(len(chunks)), q_len)  # [T]
    pos = np.arange(total) - q_start[chunk_of_row] + (ctx_len - q_len)[chunk_of_row]  # [T]
    slot = block_table[chunk_of_row, pos // block_size].astype(np.int64) * block_size + pos % block_size

    seg_ids = sorted({g for c in chunks for g in c.segments})
    index = {g: i for i, g in enumerate(seg_ids)}
    rows_per_seg: list[list[np.ndarray]] = [[] for _ in seg_ids]
    for s, c in enumerate(chunks):
        rows = np.arange(q_start[s], q_start[s + 1], dtype=np.int64)
        for g in c.segments:
            rows_per_seg[index[g]].append(rows)
    seg_rows = [np.concatenate(r) if r else np.zeros(0, np.int64) for r in rows_per_seg]
    seg_q_start = np.zeros(len(seg_ids) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in seg_rows], out=seg_q_start[1:])
    seg_q_rows = np.concatenate(seg_rows) if seg_rows else np.zeros(0, np.int64)
    seg_len = np.array([step.segments[g].length for g in seg_ids], dtype=np.int32)
    seg_block_table = _pad_table([step.segments[g].block_ids for g in seg_ids])

    host = HostMeta(block_size=block_size, q_start=q_start, q_len=q_len, ctx_len=ctx_len, block_table=block_table,
                    slot_mapping=slot, seg_len=seg_len, seg_block_table=seg_block_table, seg_q_start=seg_q_start,
                    seg_q_rows=seg_q_rows)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return AttnMetadata(
        host=host, slot_mapping=t(slot), q_start=t(q_start), q_len=t(q_len), ctx_len=t(ctx_len),
        block_table=t(block_table), seg_len=t(seg_len), seg_block_table=t(seg_block_table),
        seg_q_start=t(seg_q_start), seg_q_rows=t(seg_q_rows),
    )
