"""Scaffolding shared by the attention tests (torch, gather, triton and native backends): hand-made
steps over shuffled block ids, random caches, tolerances, and one-call plan + run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from batchcli.engine.attention.backend import AttentionBackend
from batchcli.engine.attention.metadata import AttnMetadata
from batchcli.engine.step import SegmentView, SeqChunk, SeqOwner, StepBatch

# Per dtype: bf16 rounds q/k/v, the softmax weights fed to the second matmul, and each part's output.
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2)}


@dataclass(frozen=True)
class Chunk:
    segments: tuple[int, ...]  # segment ids, outermost first
    history: int  # private tokens computed in earlier steps
    q_len: int  # tokens computed now


# Segment sizes are in blocks (segments are whole blocks); private lengths are deliberately odd.
SCENARIOS: dict[str, tuple[dict[int, int], list[Chunk]]] = {
    "decode": (
        {0: 3, 1: 2},
        [Chunk((0,), 0, 1), Chunk((0,), 5, 1), Chunk((0,), 17, 1), Chunk((0,), 30, 1),  # tails differ
         Chunk((1,), 9, 1),  # a one-member group
         Chunk((), 22, 1)],  # no shared prefix
    ),
    "prefill": (
        {0: 2},
        [Chunk((0,), 0, 37),
         Chunk((), 13, 20),  # a chunk in the middle of a private prompt
         Chunk((), 0, 11)],  # plain causal
    ),
    "mixed": (
        {0: 2, 1: 1},
        [Chunk((0,), 3, 1), Chunk((0,), 6, 1), Chunk((0, 1), 10, 1), Chunk((0,), 7, 19), Chunk((), 0, 5)],
    ),
    "no_sharing": ({}, [Chunk((), 0, 11), Chunk((), 7, 1), Chunk((), 20, 1)]),  # a part per row: no merge
    "one_prefill": ({0: 3}, [Chunk((0,), 0, 40)]),  # a part per bucket: each can be read in place
    "nested": (  # three levels: 0 > 1 > 2, rows under one, two and three segments
        {0: 2, 1: 1, 2: 3},
        [Chunk((0,), 4, 1), Chunk((0, 1), 2, 1), Chunk((0, 1, 2), 0, 9), Chunk((0, 1, 2), 3, 1),
         Chunk((0, 1, 2), 25, 6), Chunk((0, 1), 1, 13)],
    ),
}
GQA = [(2, 1), (2, 3), (1, 4), (2, 8)]  # (n_kv, query heads per KV head)


def make_step(seg_blocks: Mapping[int, int], chunks: Sequence[Chunk], block_size: int, seed: int = 0,
              shuffle: bool = True) -> tuple[StepBatch, int]:
    """Segments (id -> blocks) and chunks as a StepBatch over shuffled (or ascending) block ids;
    returns it and the cache's block count (3 blocks are never used)."""
    need = sum(seg_blocks.values()) + sum(-(-(c.history + c.q_len) // block_size) for c in chunks)
    order = np.random.default_rng(seed).permutation(need + 3) if shuffle else np.arange(need + 3)
    free = iter(order.tolist())
    segments = {
        g: SegmentView(g, n * block_size, tuple(next(free) for _ in range(n))) for g, n in seg_blocks.items()
    }
    seqs = []
    for i, c in enumerate(chunks):
        private_start = sum(segments[g].length for g in c.segments)
        blocks = tuple(next(free) for _ in range(-(-(c.history + c.q_len) // block_size)))
        seqs.append(SeqChunk(SeqOwner(i), tuple(range(c.q_len)), private_start + c.history, private_start, blocks,
                             c.segments, True))
    return StepBatch(tuple(seqs), segments), need + 3


def scenario_step(scenario: str, block_size: int, seed: int = 0, shuffle: bool = True) -> tuple[StepBatch, int]:
    """One of SCENARIOS as a step (see make_step)."""
    seg_blocks, chunks = SCENARIOS[scenario]
    return make_step(seg_blocks, chunks, block_size, seed, shuffle)


def random_inputs(step: StepBatch, num_blocks: int, block_size: int, n_kv: int, group: int, d: int,
                  dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(step.num_tokens, n_kv * group, d, generator=gen).to(dtype)  # [T, H, d]
    k_cache = torch.randn(num_blocks, block_size, n_kv, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, n_kv, d, generator=gen).to(dtype)
    return q, k_cache, v_cache


def assert_near(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, loosen: float = 1.0) -> None:
    """Elementwise |actual - expected| <= loosen * (atol + rtol * |expected|), NaN failing."""
    tol = {name: loosen * value for name, value in TOLERANCE[dtype].items()}
    err = (actual.float() - expected).abs()
    ok = err <= tol["atol"] + tol["rtol"] * expected.abs()
    assert bool(ok.all()), f"{int((~ok).sum())} of {ok.numel()} values off, max error {err.max().item():.3g}"


def attend(backend: AttentionBackend, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           meta: AttnMetadata, scale: float) -> torch.Tensor:
    """One layer through a backend: its plan of the step, then run."""
    return backend.run(q, k_cache, v_cache, backend.plan(meta), scale)
