"""Splitting one job over N workers: the whole Shard cut into smaller shards along the prefix tree.

Pure Python over the plan (no Ray, no model). The unit of work is a top-level group: a top-level
segment's whole subtree, or one request that shares nothing; a group's shared segments are then
computed once, by one worker. Cost of a piece of work, in estimated seconds: prefill tokens it
computes (each shared segment once) x `TokenCosts.prefill_s` + output tokens it may generate
(max_tokens x n) x `TokenCosts.decode_s`.

Rules: a cut follows the tree (whole child subtrees, or runs of a segment's own member requests),
never a segment's token run, and never a request's samples; each piece recomputes the shared chain
above it. Pieces are packed into about workers x `per_worker` parts largest-first (LPT: each piece to
the lightest part), so workers that pull the next part when they are free stay balanced even when one
runs faster than estimated. Groups are split only when it pays: the cut is chosen among "no split"
and pieces of at most fair/2^k (fair = total / workers) by the estimated finish time of pulling the
parts, recomputation included; a finer cut must finish strictly earlier than every coarser one.

A part names its requests only: `Shard.subset(part.index)` makes the shard, with its own plan, where
it runs (planning is per part: 16-30 ms for a part of paper-shaped 2,200-token prompts, the tree walking
the shared prefix block by block; a cluster's workers do it in parallel).
Token counts are estimates from the whole plan's tree: exact, except that two pieces of one split group
packed into the same part share their prefix once when run (so the recomputation is an upper bound).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from batchcli.planning.shard import Shard
from batchcli.planning.plan import Plan


@dataclass(frozen=True, slots=True)
class TokenCosts:
    prefill_s: float  # seconds per prompt token computed
    decode_s: float  # seconds per output token


# Solved from two generation times measured by `python -m benchmarks` on the idle 2-core AMD EPYC (Zen 4)
# machine, SmolLM2-135M in bf16 with the fused CPU ops (benchmarks/RESULTS.md, 2026-12-01): no-sharing,
# 32,768 prompt + 8,192 output tokens in 35.8 s, and decode-heavy, 2,048 computed + 4,224 output tokens in
# 12.6 s. Decode cost per token falls as more sequences share a step; one figure per kind is what the cut
# needs (the ratio between the two, not the seconds).
CPU_COSTS = TokenCosts(prefill_s=3.9e-4, decode_s=2.8e-3)


@dataclass(frozen=True, slots=True)
class Part:
    """One shard-to-be: requests by their index in the whole shard (ascending), and its estimates."""

    index: tuple[int, ...]
    prefill_tokens: int  # prompt tokens it computes, each shared segment of it once
    output_tokens: int  # max_tokens x n over its requests
    cost: float  # estimated seconds


@dataclass(frozen=True, slots=True)
class ShardSet:
    parts: tuple[Part, ...]  # heaviest first: the order workers pull them in
    recomputed_prefill_tokens: int  # estimated prefill computed more than once because a group was split
    extra_pieces: int  # pieces beyond one per top-level group: how much the cut split groups


@dataclass(frozen=True, slots=True)
class _Piece:
    positions: tuple[int, ...]  # order positions in the whole plan
    prefill: int  # prompt tokens computed when run alone (its shared chain included)
    output: int
    cost: float  # estimated seconds when run alone


def make_shards(whole: Shard, workers: int, costs: TokenCosts = CPU_COSTS, per_worker: int = 4) -> ShardSet:
    """Cut `whole` into parts for `workers` workers (see the module docstring)."""
    if workers < 1 or per_worker < 1:
        raise ValueError(f"workers and per_worker must be >= 1, got {workers} and {per_worker}")
    tree = _Tree(whole, costs)
    units = tree.units()
    if workers == 1 or not units:
        return ShardSet(tuple(_part(whole, [tree.whole_job()]) for _ in units[:1]), 0, 0)
    best: tuple[float, list[list[_Piece]], list[_Piece]] | None = None
    fair = tree.total / workers
    for target in [math.inf] + [fair / 2**k for k in range(per_worker.bit_length() + 2)]:
        pieces = [q for u in units for q in tree.cut(u, target)]
        bins = _pack(pieces, workers * per_worker)
        finish = max(pull_loads(sorted((sum(p.cost for p in b) for b in bins), reverse=True), workers))
        if best is None or finish < best[0] * (1 - 1e-9):  # a split must pay: ties keep the coarser cut
            best = (finish, bins, pieces)
    _, bins, pieces = best
    out = sorted((_part(whole, b) for b in bins), key=lambda p: (-p.cost, p.index[0]))
    recomputed = sum(p.prefill for p in pieces) - whole.plan.stats.physical_prefill_tokens
    return ShardSet(tuple(out), recomputed, len(pieces) - len(units))


def _part(whole: Shard, pieces: list[_Piece]) -> Part:
    index = tuple(sorted(whole.plan.order[p] for piece in pieces for p in piece.positions))
    return Part(index, sum(p.prefill for p in pieces), sum(p.output for p in pieces), sum(p.cost for p in pieces))


def _pack(pieces: list[_Piece], count: int) -> list[list[_Piece]]:
    """LPT: pieces heaviest first, each into the lightest of `count` bins; empty bins dropped."""
    heap = [(0.0, i) for i in range(min(count, len(pieces)))]
    bins: list[list[_Piece]] = [[] for _ in heap]
    for piece in sorted(pieces, key=lambda p: (-p.cost, p.positions[0])):
        load, i = heapq.heappop(heap)
        bins[i].append(piece)
        heapq.heappush(heap, (load + piece.cost, i))
    return [b for b in bins if b]


class _Tree:
    """Per-position and per-segment token counts of a plan, and the tree walk that splits a group."""

    def __init__(self, whole: Shard, costs: TokenCosts) -> None:
        plan: Plan = whole.plan
        self._costs = costs
        order = np.asarray(plan.order, dtype=np.int64)
        segs = plan.segments
        shared = np.zeros(len(order) + 1, np.int64)  # tokens of each position's chain, by difference array
        for s in segs:
            shared[s.first] += s.length
            shared[s.first + s.count] -= s.length
        shared = np.cumsum(shared)[:-1]
        n = np.fromiter((whole.params[r].n for r in order), np.int64, count=len(order))
        out = np.fromiter((whole.params[r].max_tokens for r in order), np.int64, count=len(order))
        self._private = n * (whole.tokens.lengths[order] - shared)  # [R] by order position
        self._output = n * out
        self._prefix_private = np.concatenate([[0], np.cumsum(self._private)])
        self._prefix_output = np.concatenate([[0], np.cumsum(self._output)])
        self.segments = segs
        self.children: list[list[int]] = [[] for _ in segs]
        self.subtree = [s.length for s in segs]  # shared prefill tokens of each subtree
        self.above = [0] * len(segs)  # prefill tokens of a segment's ancestors
        for s in segs:  # parents come before children
            if s.parent >= 0:
                self.children[s.parent].append(s.id)
                self.above[s.id] = self.above[s.parent] + segs[s.parent].length
        for s in reversed(segs):
            if s.parent >= 0:
                self.subtree[s.parent] += self.subtree[s.id]
        self.total = self._cost(*self._span(0, len(order)), sum(self.subtree[s.id] for s in segs if s.parent < 0))

    def _cost(self, private: int, output: int, shared: int = 0) -> float:
        return (private + shared) * self._costs.prefill_s + output * self._costs.decode_s

    def _span(self, first: int, count: int) -> tuple[int, int]:
        end = first + count
        return (int(self._prefix_private[end] - self._prefix_private[first]),
                int(self._prefix_output[end] - self._prefix_output[first]))

    def _piece(self, positions: range | list[int], shared: int) -> _Piece:
        """Consecutive order `positions` run alone, computing `shared` tokens of segments."""
        private, output = self._span(positions[0], len(positions))
        return _Piece(tuple(positions), private + shared, output, self._cost(private, output, shared))

    def whole_job(self) -> _Piece:
        return self._piece(range(len(self._private)), sum(self.subtree[s.id] for s in self.segments if s.parent < 0))

    def _whole(self, seg: int) -> _Piece:
        """A whole subtree alone: its requests' own work, its segments once, its ancestors' once."""
        s = self.segments[seg]
        return self._piece(range(s.first, s.first + s.count), self.subtree[seg] + self.above[seg])

    def units(self) -> list[_Piece | int]:
        """Top-level groups in order: a segment id, or a one-request piece for an unshared position."""
        out: list[_Piece | int] = []
        p, tops = 0, iter(s for s in self.segments if s.parent < 0)
        top = next(tops, None)
        while p < len(self._private):
            if top is not None and top.first == p:
                out.append(top.id)
                p += top.count
                top = next(tops, None)
            else:
                out.append(self._piece([p], 0))
                p += 1
        return out

    def cut(self, unit: _Piece | int, target: float) -> list[_Piece]:
        """`unit` whole, or cut along the tree into pieces of at most about `target` each."""
        return [unit] if isinstance(unit, _Piece) else self._pieces(unit, target)

    def _pieces(self, seg: int, target: float) -> list[_Piece]:
        """The subtree of `seg` cut along the tree into pieces of at most about `target` each: child
        subtrees, and runs of the segment's own members (requests whose deepest segment it is)."""
        whole = self._whole(seg)
        if whole.cost <= target:
            return [whole]
        s = self.segments[seg]
        chain = self.above[seg] + s.length
        out: list[_Piece] = []
        run: list[int] = []
        kids = iter(self.children[seg])
        kid = next(kids, None)
        p = s.first
        while p < s.first + s.count:
            if kid is not None and self.segments[kid].first == p:
                if run:
                    out.append(self._piece(run, chain))
                    run = []
                out += self._pieces(kid, target)
                p += self.segments[kid].count
                kid = next(kids, None)
                continue
            if run and self._piece(run + [p], chain).cost > target:
                out.append(self._piece(run, chain))
                run = []
            run.append(p)
            p += 1
        if run:
            out.append(self._piece(run, chain))
        return out


def pull_loads(costs: tuple[float, ...] | list[float], workers: int) -> list[float]:
    """Each worker's total when free workers take the next shard in order (what the driver does)."""
    heap = [(0.0, w) for w in range(workers)]
    loads = [0.0] * workers
    for c in costs:
        load, w = heapq.heappop(heap)
        loads[w] = load + c
        heapq.heappush(heap, (loads[w], w))
    return loads


def skew(values: list[float] | tuple[float, ...]) -> float:
    """max / mean - 1 (0 when perfectly balanced or empty)."""
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean - 1 if mean > 0 else 0.0
