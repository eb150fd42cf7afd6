"""Attention without the shared-prefix decomposition: each chunk gathers its whole KV and attends alone.

This is what a paged-attention engine without prefix-aware kernels does (a shared prefix is read once
per request, not once per group); it exists as the ablation baseline for `--attention gather`.
Invariant: same semantics as every backend (metadata.py), so outputs match the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from batchcli.engine.attention.metadata import AttnMetadata, take_rows


@dataclass(frozen=True, slots=True)
class ChunkKV:
    rows: slice  # the chunk's query rows
    slots: torch.Tensor  # int64 [L]: cache slots of its segments, then its private KV
    mask: torch.Tensor  # bool [q_len, L]: True where a query may attend


class GatherAttention:
    """The "gather" backend (see attention.backend for the contract)."""

    def plan(self, meta: AttnMetadata) -> tuple[ChunkKV, ...]:
        h, device = meta.host, meta.device
        chunks = []
        for s, segments in enumerate(h.chunk_segments()):
            first, q_len, ctx = int(h.q_start[s]), int(h.q_len[s]), int(h.ctx_len[s])
            parts = [h.segment_slots(g) for g in segments]
            shared = sum(len(p) for p in parts)
            parts.append(h.private_slots(s, ctx))
            key_pos = np.arange(ctx)  # private positions
            query_pos = np.arange(ctx - q_len, ctx)
            mask = np.ones((q_len, shared + ctx), dtype=bool)
            mask[:, shared:] = key_pos[None, :] <= query_pos[:, None]
            chunks.append(ChunkKV(slice(first, first + q_len), torch.from_numpy(np.concatenate(parts)).to(device),
                                  torch.from_numpy(mask).to(device)))
        return tuple(chunks)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: tuple[ChunkKV, ...],
            scale: float) -> torch.Tensor:
        """q [T, H, d], caches [num_blocks, bs, n_kv, d] -> [T, H, d]; one SDPA call per chunk."""
        n_kv, d = k_cache.shape[2], k_cache.shape[3]
        keys, values = k_cache.view(-1, n_kv, d), v_cache.view(-1, n_kv, d)
        out = torch.empty_like(q)
        for c in plan:
            k = take_rows(keys, c.slots).transpose(0, 1)  # [n_kv, L, d]
            v = take_rows(values, c.slots).transpose(0, 1)  # [n_kv, L, d]
            o = F.scaled_dot_product_attention(q[c.rows].transpose(0, 1), k, v, attn_mask=c.mask, scale=scale,
                                               enable_gqa=True)  # [H, q_len, d]
            out[c.rows] = o.transpose(0, 1)
        return out
