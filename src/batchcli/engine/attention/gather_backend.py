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


def _slots(blocks: np.ndarray, length: int, block_size: int) -> np.ndarray:
    pos = np.arange(length)
    return blocks[pos // block_size].astype(np.int64) * block_size + pos % block_size


def _plan(meta: AttnMetadata) -> list[ChunkKV]:
    h, bs = meta.host, meta.block_size
    segs_of_row: dict[int, list[int]] = {}
    for g in range(len(h["seg_len"])):
        for r in h["seg_q_rows"][h["seg_q_start"][g] : h["seg_q_start"][g + 1]]:
            segs_of_row.setdefault(int(r), []).append(g)
    chunks = []
    for s in range(len(h["q_len"])):
        first, q_len, ctx = int(h["q_start"][s]), int(h["q_len"][s]), int(h["ctx_len"][s])
        parts = [_slots(h["seg_block_table"][g], int(h["seg_len"][g]), bs) for g in segs_of_row.get(first, [])]
        shared = sum(len(p) for p in parts)
        parts.append(_slots(h["block_table"][s], ctx, bs))
        key_pos = np.arange(ctx)  # private positions
        query_pos = np.arange(ctx - q_len, ctx)
        mask = np.ones((q_len, shared + ctx), dtype=bool)
        mask[:, shared:] = key_pos[None, :] <= query_pos[:, None]
        chunks.append(ChunkKV(slice(first, first + q_len), torch.from_numpy(np.concatenate(parts)).to(meta.slot_mapping.device),
                              torch.from_numpy(mask).to(meta.slot_mapping.device)))
    return chunks


def gather_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata,
                     scale: float) -> torch.Tensor:
    """q [T, H, d], caches [num_blocks, bs, n_kv, d] -> [T, H, d]; one SDPA call per chunk."""
    chunks = meta.prepared.get("gather")
    if chunks is None:
        chunks = meta.prepared["gather"] = _plan(meta)
    n_kv, d = k_cache.shape[2], k_cache.shape[3]
    keys, values = k_cache.view(-1, n_kv, d), v_cache.view(-1, n_kv, d)
    out = torch.empty_like(q)
    for c in chunks:
        k = take_rows(keys, c.slots).transpose(0, 1)  # [n_kv, L, d]
        v = take_rows(values, c.slots).transpose(0, 1)  # [n_kv, L, d]
        o = F.scaled_dot_product_attention(q[c.rows].transpose(0, 1), k, v, attn_mask=c.mask, scale=scale,
                                           enable_gqa=True)  # [H, q_len, d]
        out[c.rows] = o.transpose(0, 1)
    return out
