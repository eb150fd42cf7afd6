"""What each worker did, and the job's RunStats summed over them.

Invariant: a worker's request and token counts are those of the events the driver took from it (an
event dropped as a duplicate counts nowhere), so the workers' requests add up to the job's; the
compute counts (prefill, decode, run time) are what the worker spent, a shard cut short by its death
counted up to its last progress report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from batchcli.distributed.worker import WorkerInfo
from batchcli.engine.engine import RunStats
from batchcli.engine.events import Answer, Event, Pooled
from batchcli.planning.shard import Shard
from batchcli.progress import Progress


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker's share of the job (the `workers` list of --metrics)."""

    worker: int
    node: str
    threads: int
    shards: tuple[int, ...]  # positions in the shard list of the shards it finished, in the order it ran them
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    prefill_tokens_computed: int
    decode_tokens: int
    run_s: float
    model_load_s: float
    died: bool


@dataclass(slots=True)
class Tally:
    """A worker's counts as its batches arrive."""

    info: WorkerInfo
    shards: list[int] = field(default_factory=list)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finished: list[RunStats] = field(default_factory=list)
    running: Progress | None = None  # the latest progress of the shard it runs now
    died: bool = False

    def take(self, event: Event) -> None:
        self.requests += 1
        if isinstance(event, Answer):
            n = len(event.completions)
            self.prompt_tokens += event.prompt_tokens * n
            self.cached_tokens += event.cached_tokens * n
            self.completion_tokens += event.completion_tokens
        elif isinstance(event, Pooled):
            self.prompt_tokens += event.prompt_tokens
            self.cached_tokens += event.cached_tokens

    def shard_done(self, number: int, stats: RunStats) -> None:
        self.shards.append(number)
        self.finished.append(stats)
        self.running = None

    @property
    def prefill_tokens(self) -> int:
        return sum(s.prefill_tokens_computed for s in self.finished) + (self.running.prefill_tokens if self.running else 0)

    @property
    def decode_tokens(self) -> int:
        return sum(s.decode_tokens for s in self.finished) + (self.running.decode_tokens if self.running else 0)

    def freeze(self, worker: int) -> WorkerStats:
        run_s = sum(s.run_s for s in self.finished) + (self.running.elapsed if self.running else 0.0)
        return WorkerStats(worker, self.info.node, self.info.threads, tuple(self.shards), self.requests,
                           self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.prefill_tokens,
                           self.decode_tokens, run_s, self.info.load_s, self.died)


def combine(tallies: Sequence[Tally], shards: Sequence[Shard], run_s: float) -> RunStats:
    """The job's RunStats: counts summed over workers; KV pools summed over workers (each its largest);
    the saving ratio of the shards' own plans (what sharing survived the split)."""
    finished = [s for t in tallies for s in t.finished]
    logical = sum(s.plan.stats.logical_prefill_tokens for s in shards)
    physical = sum(s.plan.stats.physical_prefill_tokens for s in shards)
    first = finished[0] if finished else None
    return RunStats(
        model_load_s=max((t.info.load_s for t in tallies), default=0.0), run_s=run_s,
        requests=sum(t.requests for t in tallies), prompt_tokens=sum(t.prompt_tokens for t in tallies),
        completion_tokens=sum(t.completion_tokens for t in tallies), cached_tokens=sum(t.cached_tokens for t in tallies),
        prefill_tokens_computed=sum(t.prefill_tokens for t in tallies), decode_tokens=sum(t.decode_tokens for t in tallies),
        saving_ratio=1 - physical / logical if logical else 0.0, steps=sum(s.steps for s in finished),
        preemptions=sum(s.preemptions for s in finished),
        kv_blocks=sum(max((s.kv_blocks for s in t.finished), default=0) for t in tallies),
        peak_kv_blocks=sum(max((s.peak_kv_blocks for s in t.finished), default=0) for t in tallies),
        peak_kv_bytes=sum(max((s.peak_kv_bytes for s in t.finished), default=0) for t in tallies),
        device=first.device if first else "", dtype=first.dtype if first else "",
        attention=first.attention if first else "", native_build_s=max((s.native_build_s for s in finished), default=0.0),
    )
