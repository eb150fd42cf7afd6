"""A shard's requests as the engine answers them: each gets exactly one event.

`ShardEvents` collects the samples of each request (by shard position) and emits its Answer when the
last of its n samples finishes, a pooled request's Pooled at once, or a Refusal (after which its
other samples are dropped); it keeps the run's token counts. `refuse_misfits` refuses, before the first
step, the requests one sample of which cannot fit the KV pool even alone.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from batchcli.engine.events import Answer, Completion, Event, Pooled, Refusal
from batchcli.params import SamplingParams
from batchcli.planning.shard import Shard


def refuse_misfits(shard: Shard, num_blocks: int, block_size: int, results: ShardEvents) -> frozenset[int]:
    """Refuse the requests one sample of which cannot fit the pool even alone; their shard positions.

    A sample alone needs its prompt + max_tokens of KV (shared segments are whole blocks, so counting
    them with its private tail rounds the same); any sample that fits alone finishes, by preemption.
    The scheduler runs the shard's plan without them (it never replans: see Scheduler's `refused`).
    """
    max_tokens = np.fromiter((p.max_tokens for p in shard.params), dtype=np.int64, count=len(shard))
    need = -(-(shard.tokens.lengths + max_tokens) // block_size)  # [R]
    misfits = frozenset((need > num_blocks).nonzero()[0].tolist())
    for i in sorted(misfits):
        results.fail(i, "kv_budget_exceeded",
                     f"prompt of {int(shard.tokens.lengths[i])} tokens + max_tokens {int(max_tokens[i])} needs "
                     f"{int(need[i])} KV blocks of {block_size} tokens, the KV budget holds {num_blocks}")
    return misfits


class ShardEvents:
    """Collects the samples of each request (by shard position) and emits its Answer once all n are done."""

    def __init__(self, shard: Shard, on_event: Callable[[Event], None]) -> None:
        self._shard = shard
        self._on_event = on_event
        self._pending: dict[int, dict[int, Completion]] = {}
        self._failed: set[int] = set()
        self.started: set[int] = set()  # requests with a sampled token and no event yet (what a checkpoint holds)
        self.done = self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0

    def params(self, request: int) -> SamplingParams:
        return self._shard.params[request]

    def fail(self, request: int, code: str, message: str) -> None:
        """Answer `request` with a Refusal now; its other samples are dropped when they finish."""
        if request in self._failed:
            return
        self._failed.add(request)
        self._pending.pop(request, None)
        self.started.discard(request)
        self._on_event(Refusal(self._shard.index[request], code, message))
        self.done += 1

    def prompt(self, request: int) -> np.ndarray:
        return self._shard.tokens[request]

    def pooled(self, request: int, values: np.ndarray, cached: int) -> None:
        """Answer a pooled request with its values now (it has one sequence, finished)."""
        prompt_tokens = len(self._shard.tokens[request])
        self._on_event(Pooled(self._shard.index[request], values, prompt_tokens, cached))
        self.done += 1
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached

    def add(self, request: int, sample: int, completion: Completion, cached: int) -> None:
        if request in self._failed:
            return
        got = self._pending.setdefault(request, {})
        got[sample] = completion
        n = self._shard.params[request].n
        if len(got) < n:
            return
        del self._pending[request]
        self.started.discard(request)
        prompt_tokens = len(self._shard.tokens[request])
        answer = Answer(self._shard.index[request], tuple(got[i] for i in range(n)), prompt_tokens, cached)
        self._on_event(answer)
        self.done += 1
        self.prompt_tokens += prompt_tokens * n
        self.completion_tokens += answer.completion_tokens
        self.cached_tokens += cached * n
