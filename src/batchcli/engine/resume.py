"""Checkpoints of in-flight sequences, engine side: take a snapshot, and start a run from one.

The engine knows requests by index only; the front half (checkpoint.py) names them by id and owns the
file. Invariant: a snapshot is taken between steps, so each sample's generated tokens and its
sampler's RNG state belong together; restoring them before the first step makes a sample continue
exactly where it was (its prompt + generated tokens are prefilled again, as after a preemption, and
its next draw comes from the same RNG state).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from batchcli.engine.sampler import Sampler
from batchcli.engine.scheduler import Scheduler
from batchcli.engine.sequence import SeqStatus
from batchcli.engine.stopping import StopChecker
from batchcli.params import SamplingParams
from batchcli.engine.events import Completion

# the sizes of a generator's state: CPU (Mersenne Twister) and CUDA (Philox seed + offset)
RNG_STATE_SIZES = frozenset({torch.Generator().get_state().numel(), 16})


@dataclass(frozen=True, slots=True)
class SampleState:
    sample: int  # 0 .. n - 1
    generated: tuple[int, ...]
    finished: bool
    rng_state: bytes | None  # the sampler generator's state; None for greedy or finished samples


@dataclass(frozen=True, slots=True)
class InFlight:
    """A request with some samples started but no result emitted yet."""

    request: int  # index into the job's requests
    samples: tuple[SampleState, ...]  # only samples with generated tokens


@dataclass(slots=True)
class Checkpointing:
    """How a run checkpoints: `save` gets the in-flight requests every `every_s` seconds (0: never) and
    once at the end; `restored` (by request index) is what an earlier run left in flight."""

    every_s: float
    save: Callable[[list[InFlight]], None]
    restored: dict[int, tuple[SampleState, ...]] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        if self.every_s <= 0 or time.monotonic() - self._last < self.every_s:
            return False
        self._last = time.monotonic()
        return True


def snapshot(requests: set[int], sched: Scheduler, sampler: Sampler, numbering: Sequence[int]) -> list[InFlight]:
    """The in-flight state of `requests` (those started and not yet answered), sorted, each named by
    `numbering[index]` (its index in the job the caller gave)."""
    out = []
    for r in sorted(requests):
        samples = []
        for seq_id in sched.seq_ids(r):
            seq = sched.seq(seq_id)
            if seq.generated:
                done = seq.status is SeqStatus.FINISHED
                samples.append(SampleState(seq.sample, tuple(seq.generated), done, None if done else sampler.state(seq_id)))
        if samples:
            out.append(InFlight(numbering[r], tuple(samples)))
    return out


def restore(restored: dict[int, tuple[SampleState, ...]], sched: Scheduler, sampler: Sampler, stopper: StopChecker,
            params: Callable[[int], SamplingParams], add: Callable[[int, int, Completion, int], None]) -> None:
    """Before the first step: give each restored sample its tokens and RNG state; a finished one is
    handed to `add` (request, sample, completion, cached tokens) and never runs."""
    finished: list[tuple[int, int, Completion, int]] = []
    for r, samples in restored.items():
        ids = sched.seq_ids(r)
        for s in samples:
            seq_id = ids[s.sample]
            completion = stopper.check(list(s.generated), params(r)) if s.finished else None
            sched.restore_sequence(seq_id, list(s.generated), finished=completion is not None)
            if completion is not None:
                finished.append((r, s.sample, completion, sched.seq(seq_id).private_start))
            elif s.rng_state is not None:
                sampler.restore(seq_id, s.rng_state)
    for item in finished:
        add(*item)
