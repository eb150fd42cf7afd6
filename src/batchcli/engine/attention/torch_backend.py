"""The "torch" attention backend: shared-prefix paged attention as a few batched torch ops per layer.

A row's attention splits into parts over disjoint KV: every shared segment it sits under, its chunk's
private history (before this step's tokens) and the chunk's own tokens (causal). Each part gives an
output and a log-sum-exp per row and head; the parts merge exactly through their log-sum-exp.
Parts are "runs" (rows that all see the first n keys of a KV run: a segment, a decode's private KV, a
prefill chunk's history) or "squares" (a chunk's own tokens, causal). Parts of one kind and similar
shape are padded into one kernel call, so the queries of all rows under a segment are stacked and
the segment's KV is read once per layer, and a run packs the G query heads of a KV head as G query
rows, so GQA runs as matrix-matrix products. Keys are gathered from the paged cache, or read in
place through a strided view when a bucket's blocks lie evenly in the cache (segments allocated at once).

Invariant: the plan (gather indices, masks, output rows) depends only on the step's metadata and the
dtype; it is built on first use, cached in `meta.prepared` and reused by every layer. KV slots never
written must hold finite values (the model allocates its caches with zeros): padded keys read them
under a -inf mask, and a NaN there would poison the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from batchcli.engine.attention.metadata import AttnMetadata

# What one more kernel call costs on CPU (~50 us of gathers, reshapes and launch), in the
# (query row x key) pairs of attention work done in that time for a small model's heads.
_CALL_COST = 2048

# (q, k, v, mask, causal, scale) -> (out [B, h, Lq, d] in q's dtype, lse float32 [B, h, Lq])
Kernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", bool, float],
    tuple[torch.Tensor, torch.Tensor],
]


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

    buckets: tuple[Bucket, ...]
    merge: bool  # some row has several parts; else every row has exactly one and outputs are copied


def _slots(blocks: np.ndarray, block_size: int, n: int) -> np.ndarray:
    """Cache slots of tokens 0..n-1 of a block list."""
    used = blocks[: -(-n // block_size)].astype(np.int64)  # [ceil(n / bs)]
    return (used[:, None] * block_size + np.arange(block_size)).reshape(-1)[:n]  # [n]


def _parts(meta: AttnMetadata) -> tuple[list[_Part], list[_Part]]:
    """Split every row's attention into runs and squares (see the module docstring)."""
    h, bs = meta.host, meta.block_size
    runs: list[_Part] = []
    squares: list[_Part] = []
    for g in range(meta.num_segments):
        rows = h["seg_q_rows"][h["seg_q_start"][g] : h["seg_q_start"][g + 1]].astype(np.int64)
        if len(rows):
            runs.append(_Part(rows, _slots(h["seg_block_table"][g], bs, int(h["seg_len"][g]))))
    for s in range(meta.num_seqs):
        q_len, ctx = int(h["q_len"][s]), int(h["ctx_len"][s])
        rows = np.arange(h["q_start"][s], h["q_start"][s + 1], dtype=np.int64)
        private = _slots(h["block_table"][s], bs, ctx)
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


def step_plan(meta: AttnMetadata, dtype: torch.dtype) -> StepPlan:
    """The step's plan for this dtype, built on the first call and cached in `meta.prepared`;
    torch_attention calls it, a caller may call it ahead (to time it, or to plan off the layer loop)."""
    key = f"torch/{dtype}"
    plan = meta.prepared.get(key)
    if plan is None:
        runs, squares = _parts(meta)
        device = meta.slot_mapping.device
        buckets = [_bucket(g, False, meta.num_tokens, dtype, device) for g in _group(runs)]
        buckets += [_bucket(g, True, meta.num_tokens, dtype, device) for g in _group(squares)]
        plan = StepPlan(tuple(buckets), merge=sum(len(p.rows) for p in runs + squares) > meta.num_tokens)
        meta.prepared[key] = plan
    assert isinstance(plan, StepPlan), f"meta.prepared[{key!r}] holds a {type(plan).__name__}"
    return plan


def _kernel_flash_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's CPU flash attention: float32 softmax and accumulation, bf16 tiles stay bf16."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=mask, scale=scale
    )


def _kernel_matmul(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain float32 matmul-softmax-matmul, for devices without the CPU flash kernel."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [B, h, Lq, L]
    if mask is not None:
        scores = scores + mask
    if causal:
        above = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)  # [Lq, L]
        scores = scores.masked_fill(above, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, h, Lq]
    out = torch.matmul(torch.exp(scores - lse[..., None]), v.float())  # [B, h, Lq, d]
    return out.to(q.dtype), lse


_KERNELS: dict[str, Kernel] = {"cpu": _kernel_flash_cpu}


def _keys(cache: torch.Tensor, b: Bucket) -> torch.Tensor:
    """A bucket's keys (or values) as [B, n_kv, L, d]: a strided view when possible, else a gather."""
    n_b, n_l = b.kv_slots.shape
    n_kv, d = cache.shape[2], cache.shape[3]
    if b.kv_view is not None:
        first, distance = b.kv_view
        flat = cache.view(-1, n_kv, d)[first:]  # [slots - first, n_kv, d]
        return flat.as_strided((n_b, n_kv, n_l, d), (distance * n_kv * d, d, n_kv * d, 1))
    rows = cache.view(-1, n_kv * d).index_select(0, b.kv_slots.view(-1))  # [B*L, n_kv*d]
    return rows.view(n_b, n_l, n_kv, d).transpose(1, 2)  # [B, n_kv, L, d]


def _queries(q: torch.Tensor, b: Bucket) -> torch.Tensor:
    n_b, n_q = b.q_index.shape
    rows = q.reshape(q.shape[0], -1).index_select(0, b.q_index.view(-1))  # [B*Q, H*d]
    return rows.view(n_b, n_q, *q.shape[1:])  # [B, Q, H, d]


def _attend_runs(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, b: Bucket, scale: float, kernel: Kernel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs: the G query heads of a KV head are stacked as G query rows against that head's keys."""
    n_b, n_q = b.q_index.shape
    n_heads, d = q.shape[1], q.shape[2]
    n_kv = k_cache.shape[2]
    qs = _queries(q, b).view(n_b, n_q, n_kv, -1, d)  # [B, Q, n_kv, G, d]
    qs = qs.permute(0, 2, 1, 3, 4).reshape(n_b, n_kv, -1, d)  # [B, n_kv, Q*G, d]
    ks, vs = _keys(k_cache, b), _keys(v_cache, b)  # [B, n_kv, L, d]
    out, lse = kernel(qs, ks, vs, b.mask, False, scale)  # [B, n_kv, Q*G, d], [B, n_kv, Q*G]
    out = out.view(n_b, n_kv, n_q, -1, d).permute(0, 2, 1, 3, 4).reshape(n_b * n_q, n_heads, d)  # [B*Q, H, d]
    lse = lse.view(n_b, n_kv, n_q, -1).permute(0, 2, 1, 3).reshape(n_b * n_q, n_heads)  # [B*Q, H]
    return out, lse


def _attend_squares(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, b: Bucket, scale: float, kernel: Kernel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squares: causal over a chunk's own tokens; KV heads are repeated, as the mask is per query."""
    n_b, n_q = b.q_index.shape
    n_heads, d = q.shape[1], q.shape[2]
    group = n_heads // k_cache.shape[2]
    qs = _queries(q, b).transpose(1, 2)  # [B, H, Q, d]
    ks = _keys(k_cache, b).repeat_interleave(group, dim=1)  # [B, H, Q, d]
    vs = _keys(v_cache, b).repeat_interleave(group, dim=1)  # [B, H, Q, d]
    out, lse = kernel(qs, ks, vs, None, True, scale)  # [B, H, Q, d], [B, H, Q]
    return out.transpose(1, 2).reshape(n_b * n_q, n_heads, d), lse.transpose(1, 2).reshape(n_b * n_q, n_heads)


def _merge(results: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], num_rows: int) -> torch.Tensor:
    """Exact log-sum-exp merge of every part's (out [E, H, d], lse [E, H], rows [E]) into its row;
    row num_rows collects the padding. Returns float32 [T, H, d]."""
    n_heads, d = results[0][0].shape[1:]
    device = results[0][0].device
    top = torch.full((num_rows + 1, n_heads), float("-inf"), device=device)  # [T+1, H]
    for _, lse, rows in results:
        top.scatter_reduce_(0, rows[:, None].expand(-1, n_heads), lse, "amax")
    total = torch.zeros(num_rows + 1, n_heads, d, device=device)  # [T+1, H, d]
    norm = torch.zeros(num_rows + 1, n_heads, device=device)  # [T+1, H]
    for out, lse, rows in results:
        weight = torch.exp(lse - top[rows])  # [E, H]
        total.index_add_(0, rows, out * weight[..., None])
        norm.index_add_(0, rows, weight)
    return total[:num_rows] / norm[:num_rows, :, None]


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"want q [T, H, d] and caches [blocks, bs, n_kv, d]; got q {tuple(q.shape)}, "
                         f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    if q.shape[0] != meta.num_tokens or k_cache.shape[1] != meta.block_size:
        raise ValueError(f"q has {q.shape[0]} rows and caches block size {k_cache.shape[1]}, but the "
                         f"metadata has {meta.num_tokens} rows and block size {meta.block_size}")
    if q.shape[1] % k_cache.shape[2] or q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"q heads x dim {tuple(q.shape[1:])} do not fit KV heads x dim "
                         f"{tuple(k_cache.shape[2:])}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous: keys are read as strided views of them")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"q, k_cache and v_cache dtypes differ: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")


def torch_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata, scale: float
) -> torch.Tensor:
    """q [T, H, d]; caches [num_blocks, block_size, n_kv, d] with this step's K/V written; -> [T, H, d]."""
    _check(q, k_cache, v_cache, meta)
    plan = step_plan(meta, q.dtype)
    if not plan.buckets:
        return q.new_zeros(q.shape)
    kernel = _KERNELS.get(q.device.type, _kernel_matmul)
    results = []
    for b in plan.buckets:
        attend = _attend_squares if b.causal else _attend_runs
        out, lse = attend(q, k_cache, v_cache, b, scale, kernel)
        results.append((out, lse, b.out_rows))
    if plan.merge:
        return _merge(results, q.shape[0]).to(q.dtype)
    single = q.new_empty(q.shape[0] + 1, *q.shape[1:])  # [T+1, H, d]: each row has one part
    for out, _, rows in results:
        single.index_copy_(0, rows, out)
    return single[: q.shape[0]]
