"""Independent float32 reference for shared-prefix attention, for tests only.

It ignores the split: for each row it gathers the full KV the row may see (its segments, then its
private prefix up to its own position) and runs an ordinary softmax. Slow and obviously right.
"""

from __future__ import annotations

import torch

from batchcli.engine.attention.metadata import AttnMetadata


def _gather(cache: torch.Tensor, blocks: list[int], length: int) -> torch.Tensor:
    """Tokens 0..length-1 of a block list as [length, n_kv, d]."""
    return torch.cat([cache[b] for b in blocks], dim=0)[:length] if length else cache[0][:0]


def reference_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata, scale: float
) -> torch.Tensor:
    """q [T, H, d]; caches [num_blocks, bs, n_kv, d]; returns float32 [T, H, d]."""
    h = meta.host
    bs = h.block_size
    n_heads, n_kv = q.shape[1], k_cache.shape[2]
    group = n_heads // n_kv
    out = torch.zeros(q.shape, dtype=torch.float32)
    for s, segments in enumerate(h.chunk_segments()):
        n_blocks = -(-int(h.ctx_len[s]) // bs)
        blocks = [int(b) for b in h.block_table[s, :n_blocks]]
        first_pos = int(h.ctx_len[s] - h.q_len[s])
        for i, row in enumerate(range(int(h.q_start[s]), int(h.q_start[s + 1]))):
            ks, vs = [], []
            for g in segments:
                seg_blocks = [int(b) for b in h.seg_block_table[g, : int(h.seg_len[g]) // bs]]
                ks.append(_gather(k_cache, seg_blocks, int(h.seg_len[g])))
                vs.append(_gather(v_cache, seg_blocks, int(h.seg_len[g])))
            ks.append(_gather(k_cache, blocks, first_pos + i + 1))
            vs.append(_gather(v_cache, blocks, first_pos + i + 1))
            k = torch.cat(ks).float().repeat_interleave(group, dim=1)  # [L, H, d]
            v = torch.cat(vs).float().repeat_interleave(group, dim=1)  # [L, H, d]
            scores = torch.einsum("hd,lhd->hl", q[row].float(), k) * scale  # [H, L]
            out[row] = torch.einsum("hl,lhd->hd", scores.softmax(dim=-1), v)
    return out


class ReferenceAttention:
    """The "reference" backend: its plan is the metadata itself; output in q's dtype."""

    def plan(self, meta: AttnMetadata) -> AttnMetadata:
        return meta

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: AttnMetadata,
            scale: float) -> torch.Tensor:
        return reference_attention(q, k_cache, v_cache, plan, scale).to(q.dtype)
