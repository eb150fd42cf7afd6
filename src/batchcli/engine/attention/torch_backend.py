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

The plan (buckets, gather indices, masks, the merge index) comes from torch_plan, once per step
(`TorchAttention.plan`); `run` attends one layer with it.
Invariant: KV slots never written must hold finite values (the model allocates its caches with zeros): padded keys read them
under a -inf mask, and a NaN there would poison the row.
"""

from __future__ import annotations

from typing import Callable

import torch

from batchcli.engine.attention.metadata import AttnMetadata, take_rows
from batchcli.engine.attention.torch_plan import Bucket, StepPlan, step_plan

# (q, k, v, mask, causal, scale) -> (out [B, h, Lq, d] in q's dtype, lse float32 [B, h, Lq])
Kernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", bool, float],
    tuple[torch.Tensor, torch.Tensor],
]


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
    rows = take_rows(cache.view(-1, n_kv * d), b.kv_slots.view(-1))  # [B*L, n_kv*d]
    return rows.view(n_b, n_l, n_kv, d).transpose(1, 2)  # [B, n_kv, L, d]


def _queries(q: torch.Tensor, b: Bucket) -> torch.Tensor:
    n_b, n_q = b.q_index.shape
    rows = take_rows(q.reshape(q.shape[0], -1), b.q_index.view(-1))  # [B*Q, H*d]
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


def _merge(results: list[tuple[torch.Tensor, torch.Tensor]], plan: StepPlan) -> torch.Tensor:
    """Exact log-sum-exp merge of every part's (out [E_b, H, d], lse [E_b, H]) into its row, by
    gathering each row's K parts (plan.parts_of_row) rather than scattering. Returns [T, H, d]."""
    n_heads, d = results[0][0].shape[1:]
    first = results[0][0]
    outs = torch.cat([o for o, _ in results] + [first.new_zeros(1, n_heads, d)])  # [E+1, H, d]
    index = plan.parts_of_row  # [K, T]
    if index.shape[0] == 1:  # every row has one part: its output is the answer
        return take_rows(outs, index[0])
    lses = torch.cat([lse for _, lse in results] + [torch.full((1, n_heads), float("-inf"), device=first.device)])
    weight = torch.softmax(lses[index], dim=0)  # [K, T, H]: exp(lse_k - logsumexp over the row's parts)
    merged = take_rows(outs, index[0]).float() * weight[0, ..., None]  # [T, H, d]
    for k in range(1, index.shape[0]):
        merged += take_rows(outs, index[k]).float() * weight[k, ..., None]
    return merged.to(first.dtype)


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: StepPlan) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"want q [T, H, d] and caches [blocks, bs, n_kv, d]; got q {tuple(q.shape)}, "
                         f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    if q.shape[0] != plan.num_tokens or k_cache.shape[1] != plan.block_size:
        raise ValueError(f"q has {q.shape[0]} rows and caches block size {k_cache.shape[1]}, but the "
                         f"metadata has {plan.num_tokens} rows and block size {plan.block_size}")
    if q.shape[1] % k_cache.shape[2] or q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"q heads x dim {tuple(q.shape[1:])} do not fit KV heads x dim "
                         f"{tuple(k_cache.shape[2:])}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous: keys are read as strided views of them")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(f"q, k_cache and v_cache dtypes differ: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")


class TorchAttention:
    """The "torch" backend for queries of one dtype (see attention.backend for the contract)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def plan(self, meta: AttnMetadata) -> StepPlan:
        return step_plan(meta, self.dtype)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: StepPlan,
            scale: float) -> torch.Tensor:
        """q [T, H, d]; caches [num_blocks, block_size, n_kv, d] with this step's K/V written; -> [T, H, d]."""
        _check(q, k_cache, v_cache, plan)
        if not plan.buckets:
            return q.new_zeros(q.shape)
        kernel = _KERNELS.get(q.device.type, _kernel_matmul)
        results = [(_attend_squares if b.causal else _attend_runs)(q, k_cache, v_cache, b, scale, kernel)
                   for b in plan.buckets]
        return _merge(results, plan)
