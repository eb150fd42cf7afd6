"""Attention metadata: built once per step from a StepBatch, read by every layer and every backend.

Layout of the flat token batch: the query tokens of chunk s are rows `q_start[s]:q_start[s+1]`
(chunks in StepBatch order). Each row attends to
  (a) every shared segment g with the row in `seg_rows(g)`: all `seg_len[g]` tokens, no mask;
  (b) its own chunk's private KV, causally: query i of chunk s sits at private position
      `ctx_len[s] - q_len[s] + i` and sees private positions `0 ..` that position.
KV lives in a paged cache `[num_blocks, block_size, n_kv, head_dim]`; slot = block * block_size + offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from batchcli.engine.step import StepBatch


@dataclass(slots=True)
class AttnMetadata:
    block_size: int
    num_tokens: int  # T
    slot_mapping: torch.Tensor  # int64 [T]: cache slot where each row's new K/V is written
    # private part, one entry per chunk (S chunks)
    q_start: torch.Tensor  # int32 [S + 1]
    q_len: torch.Tensor  # int32 [S]
    ctx_len: torch.Tensor  # int32 [S]: private KV length including this step's tokens
    block_table: torch.Tensor  # int32 [S, max_private_blocks], padded with 0
    # shared part, one entry per segment attended this step (G segments)
    seg_len: torch.Tensor  # int32 [G]: tokens, whole blocks
    seg_block_table: torch.Tensor  # int32 [G, max_seg_blocks], padded with 0
    seg_q_start: torch.Tensor  # int32 [G + 1]
    seg_q_rows: torch.Tensor  # int64 [sum of rows]: rows attending segment g are seg_q_rows[seg_q_start[g]:seg_q_start[g+1]], ascending
    # the same numbers as numpy arrays, for backends that loop on the host
    host: dict[str, np.ndarray] = field(default_factory=dict)
    # backend-specific derived data (tile lists...), built lazily once per step and reused per layer
    prepared: dict[str, object] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return int(self.q_len.shape[0])

    @property
    def num_segments(self) -> int:
        return int(self.seg_len.shape[0])


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x.index_select(0, index)` for a contiguous x, moving each row as int64 words when its bytes
    allow: CPU index_select copies bf16 elements one by one, ~3x slower than the same bytes as int64."""
    row_bytes = x[0].numel() * x.element_size() if x.shape[0] else 0
    if x.device.type != "cpu" or not x.is_contiguous() or row_bytes % 8:
        return x.index_select(0, index)
    words = x.view(x.shape[0], -1).view(torch.int64)  # [rows, row_bytes / 8]
    return words.index_select(0, index).view(x.dtype).view(len(index), *x.shape[1:])


def _pad_table(rows: list[tuple[int, ...]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    table = np.zeros((len(rows), max(width, 1)), dtype=np.int32)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    return table


def build_metadata(step: StepBatch, block_size: int, device: torch.device | str = "cpu") -> AttnMetadata:
    """Turn a StepBatch into the tensors every attention backend reads."""
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

    host = dict(
        q_start=q_start, q_len=q_len, ctx_len=ctx_len, block_table=block_table, slot_mapping=slot,
        seg_len=seg_len, seg_block_table=seg_block_table, seg_q_start=seg_q_start, seg_q_rows=seg_q_rows,
    )

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return AttnMetadata(
        block_size=block_size, num_tokens=total, slot_mapping=t(slot), q_start=t(q_start), q_len=t(q_len),
        ctx_len=t(ctx_len), block_table=t(block_table), seg_len=t(seg_len), seg_block_table=t(seg_block_table),
        seg_q_start=t(seg_q_start), seg_q_rows=t(seg_q_rows), host=host,
    )
