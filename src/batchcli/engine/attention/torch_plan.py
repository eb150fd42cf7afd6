"""Planning for the "torch" attention backend: which buckets of parts run, and how rows merge.

A row's attention splits into parts over disjoint KV (see torch_backend): "runs" (rows that all see
the first n keys of a KV run: a segment, a decode's private KV, a prefill chunk's history) and
"squares" (a chunk's own tokens, causal). Parts of one kind and similar shape are padded into one
bucket, attended in one kernel call; a greedy rule trades padding against the cost of another call.

Invariant: the plan depends only on the step's metadata and the dtype; it is built once per step
(TorchAttention.plan) and reused by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from batchcli.engine.attention.metadata import AttnMetadata, HostMeta

# What one more kernel call costs on CPU (~50 us of gathers, reshapes and launch), in the
# (query row x key) pairs of attention work done in that time for a small model's heads.
_CALL_COST = 2048


@dataclass(frozen=True, slots=True)
class _Part:
    """Host-side: query rows attending a run of KV slots."""

    rows: np.ndarray  # int64 [n]: rows of the flat batch
    slots: np.ndarray  # int64 [m]: cache slots of the keys, in order (a square has m == n)


@dataclass(frozen=True, slots=True)
class Bucket:
    """Parts of one kind padded to one shape [B, Q] queries x [B, L] keys, attended in one call."""

    causal: bool  # squares: query i sees keys 0..i; runs: every query sees all its part's keys
    q_index: torch.Tensor  # int64 [B, Q]: query rows, padded by repeating a part's last row
    kv_slots: torch.Tensor  # int64 [B, L]: key slots, padded by repeating a part's last slot
    mask: torch.Tensor | None  # q dtype [B, 1, 1, L]: 0 on real keys, -inf on padding; None if none
    out_rows: torch.Tensor  # int64 [B * Q]: row each padded query merges into; T for padding
    # (first slot, slot distance between parts) when the keys are one strided view of the cache
    # (each part's keys consecutive, parts equally spaced, no padding): no gather needed
    kv_view: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What every layer of one step runs: the buckets, in order."""

    num_tokens: int  # T: rows of the step
    block_size: int
    buckets: tuple[Bucket, ...]
    # int64 [K, T]: for each row, the positions of its K parts in the buckets' outputs concatenated
    # (padded queries included); a row with fewer parts points its spare entries at position E, an
    # empty part (zero output, -inf log-sum-exp) appended after the last bucket
    parts_of_row: torch.Tensor


def _parts(h: HostMeta) -> tuple[list[_Part], list[_Part]]:
    """Split every row's attention into runs and squares (see the module docstring)."""
    runs: list[_Part] = []
    squares: list[_Part] = []
    for g in range(h.num_segments):
        rows = h.segment_rows(g).astype(np.int64)
        if len(rows):
            runs.append(_Part(rows, h.segment_slots(g)))
    for s in range(h.num_seqs):
        q_len, ctx = int(h.q_len[s]), int(h.ctx_len[s])
        rows = h.chunk_rows(s)
        private = h.private_slots(s, ctx)
        if q_len == 1:  # a decode sees all its private KV: one run, batched with the other decodes
            runs.append(_Part(rows, private))
        elif q_len > 1:
            if ctx > q_len:
                runs.append(_Part(rows, private[: ctx - q_len]))
            squares.append(_Part(rows, private[ctx - q_len :]))
    return runs, squares


def _group(parts: list[_Part]) -> list[list[_Part]]:
    """Greedy over parts sorted by size: a part joins the open bucket if the padding it adds costs
    no more work than a call of its own would."""
    groups: list[list[_Part]] = []
    width = 0
    for part in sorted(parts, key=lambda p: (len(p.rows), len(p.slots)), reverse=True):
        if groups:
            depth = len(groups[-1][0].rows)  # the bucket's largest row count, thanks to the sort
            grown = max(width, len(part.slots))
            added = (len(groups[-1]) + 1) * depth * grown - len(groups[-1]) * depth * width
            if added - len(part.rows) * len(part.slots) <= _CALL_COST:
                groups[-1].append(part)
                width = grown
                continue
        groups.append([part])
        width = len(part.slots)
    return groups


def _pad_edge(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack non-empty 1-D arrays into [len(arrays), longest], each padded with its last value."""
    lengths = np.array([len(a) for a in arrays])  # [B]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # [B]
    within = np.minimum(np.arange(lengths.max()), lengths[:, None] - 1)  # [B, W]
    return np.concatenate(arrays)[starts[:, None] + within]  # [B, W]


def _bucket(parts: list[_Part], causal: bool, num_rows: int, dtype: torch.dtype, device: torch.device) -> Bucket:
    n_rows = np.array([len(p.rows) for p in parts])  # [B]
    n_keys = np.array([len(p.slots) for p in parts])  # [B]
    q_index = _pad_edge([p.rows for p in parts])  # [B, Q]
    kv_slots = _pad_edge([p.slots for p in parts])  # [B, L]
    real_q = np.arange(q_index.shape[1]) < n_rows[:, None]  # [B, Q]
    out_rows = np.where(real_q, q_index, num_rows).reshape(-1)  # [B * Q]
    mask = None
    if not causal and (n_keys < kv_slots.shape[1]).any():
        hidden = np.arange(kv_slots.shape[1]) >= n_keys[:, None]  # [B, L]
        mask = torch.zeros(hidden.shape, dtype=dtype, device=device)  # [B, L]
        mask.masked_fill_(torch.from_numpy(hidden).to(device), float("-inf"))
        mask = mask[:, None, None, :]  # [B, 1, 1, L]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return Bucket(causal, t(q_index), t(kv_slots), mask, t(out_rows), _strided(kv_slots))


def _strided(kv_slots: np.ndarray) -> tuple[int, int] | None:
    starts = kv_slots[:, :1]  # [B, 1]
    if not (kv_slots == starts + np.arange(kv_slots.shape[1])).all():
        return None
    distance = int(starts[1, 0] - starts[0, 0]) if len(starts) > 1 else 0
    if distance < 0 or (np.diff(starts[:, 0]) != distance).any():
        return None
    return int(starts[0, 0]), distance


def _parts_of_row(buckets: list[Bucket], num_rows: int) -> torch.Tensor:
    """The merge's gather index [K, T] (see StepPlan.parts_of_row)."""
    rows = torch.cat([b.out_rows for b in buckets]).cpu().numpy() if buckets else np.zeros(0, np.int64)  # [E]
    position = np.nonzero(rows < num_rows)[0]  # real queries only
    order = np.argsort(rows[position], kind="stable")
    position, row = position[order], rows[position][order]
    counts = np.bincount(row, minlength=num_rows)  # [T]
    rank = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)  # k of each part within its row
    index = np.full((max(int(counts.max(initial=0)), 1), num_rows), len(rows), dtype=np.int64)  # [K, T]
    index[rank, row] = position
    return torch.from_numpy(index)


def step_plan(meta: AttnMetadata, dtype: torch.dtype) -> StepPlan:
    """The step's plan for queries of this dtype (masks are in q's dtype)."""
    runs, squares = _parts(meta.host)
    buckets = [_bucket(g, False, meta.num_tokens, dtype, meta.device) for g in _group(runs)]
    buckets += [_bucket(g, True, meta.num_tokens, dtype, meta.device) for g in _group(squares)]
    parts_of_row = _parts_of_row(buckets, meta.num_tokens).to(meta.device)
    return StepPlan(meta.num_tokens, meta.block_size, tuple(buckets), parts_of_row)
