"""The driver of one job on many engine workers: hands out shards, and is the only caller of `on_event`.

Workers pull: an idle worker gets the next shard of the list (largest first, as the sharder orders
them), so a fast worker takes more. Invariants: each request's event reaches `on_event` at most once
(an event of a request already answered is dropped, and a shard handed out again carries only its
unanswered requests); a shard is tried at most MAX_ATTEMPTS times (its worker dying under it, or the
engine raising on it, is an attempt), then the job stops with one line; a user error (BatchError)
raised in a worker stops the job as it would in one process. On a stop request no shard is handed
out and the running ones stop admitting; the workers are killed when the driver returns or raises.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError

from batchcli.distributed.stats import Tally, WorkerStats, combine
from batchcli.distributed.worker import Delivery, WorkerInfo
from batchcli.engine.engine import RunStats, StopRequest
from batchcli.engine.events import Event
from batchcli.planning.shard import Shard
from batchcli.errors import BatchError, WorkerError
from batchcli.progress import Progress

MAX_ATTEMPTS = 3  # tries of one shard before the job stops
POLL_S = 0.5  # the longest the driver waits for a delivery before looking at the stop flag again


@dataclass(frozen=True, slots=True)
class Worker:
    """A started, loaded worker actor."""

    index: int
    actor: object  # a Ray actor handle of ShardWorker (or a subclass)
    info: WorkerInfo


@dataclass(frozen=True, slots=True)
class Retry:
    """A shard handed out again: which, why, and how many of its requests still had no answer."""

    shard: int  # position in the shard list
    worker: int  # the worker it failed on
    reason: str
    resent: int  # requests of the shard handed out again (0: all answered, nothing to redo)


@dataclass(frozen=True, slots=True)
class DistributedRun:
    stats: RunStats  # the whole job, summed over workers
    workers: tuple[WorkerStats, ...]
    retries: tuple[Retry, ...]


@dataclass(slots=True)
class _Task:
    number: int  # position in the shard list
    shard: Shard  # what is left of it to run
    attempts: int = 0


class _Driver:
    def __init__(self, shards: Sequence[Shard], workers: Sequence[Worker], on_event: Callable[[Event], None],
                 on_progress: Callable[[Progress], None], stop: StopRequest, log: Callable[[str], None]) -> None:
        self.shards, self.on_event, self.on_progress, self.stop, self.log = shards, on_event, on_progress, stop, log
        self.queue = deque(_Task(i, s) for i, s in enumerate(shards))
        self.workers = list(workers)
        self.tallies = [Tally(w.info) for w in workers]
        self.idle = list(workers)
        self.running: dict[object, tuple[_Task, Worker]] = {}  # ObjectRefGenerator -> what it runs
        self.answered: set[int] = set()
        self.total = sum(len(s) for s in shards)
        self.retries: list[Retry] = []
        self.stop_sent = False
        self.started = time.perf_counter()

    def run(self) -> DistributedRun:
        while True:
            self._hand_out()
            if not self.running:
                break
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_S)
            for gen in ready:
                self._receive(gen)
            self._forward_stop()
            self.on_progress(self._progress())
        run_s = time.perf_counter() - self.started
        return DistributedRun(combine(self.tallies, self.shards, run_s),
                              tuple(t.freeze(i) for i, t in enumerate(self.tallies)), tuple(self.retries))

    def _hand_out(self) -> None:
        while self.queue and self.idle and not self.stop.requested:
            task = self.queue.popleft()
            keep = [i for i, r in enumerate(task.shard.index) if r not in self.answered]
            if not keep:
                continue
            if len(keep) < len(task.shard):
                task.shard = task.shard.subset(keep)
            worker = self.idle.pop(0)
            self.running[worker.actor.run.remote(task.shard)] = (task, worker)
        if self.queue and not self.running and not self.stop.requested:
            raise WorkerError(f"all {len(self.workers)} engine workers died with {len(self.queue)} shards left to run; "
                              "finished results are written: --resume runs the rest")

    def _receive(self, gen: object) -> None:
        task, worker = self.running[gen]
        try:
            delivery: Delivery = ray.get(next(gen))
        except StopIteration:
            del self.running[gen]
            self.idle.append(worker)
            return
        except RayActorError as e:
            del self.running[gen]
            self.tallies[worker.index].died = True
            self._retry(task, worker, f"worker {worker.index} on node {worker.info.node} died ({_first_line(e)})")
            return
        except RayTaskError as e:
            del self.running[gen]
            if isinstance(e.cause, BatchError):
                raise e.cause from None
            self.idle.append(worker)
            self._retry(task, worker, f"{type(e.cause).__name__} on node {worker.info.node}: {_first_line(e.cause)}")
            return
        tally = self.tallies[worker.index]
        for event in delivery.events:
            if event.request in self.answered:
                continue
            self.answered.add(event.request)
            tally.take(event)
            self.on_event(event)
        if delivery.stats is not None:
            tally.shard_done(task.number, delivery.stats)
        elif delivery.progress is not None:
            tally.running = delivery.progress

    def _retry(self, task: _Task, worker: Worker, reason: str) -> None:
        """Hand the rest of a failed shard out again (first in line), or stop the job if it failed too often."""
        task.attempts += 1
        left = sum(r not in self.answered for r in task.shard.index)
        self.retries.append(Retry(task.number, worker.index, reason, left))
        if task.attempts >= MAX_ATTEMPTS:
            raise WorkerError(f"shard {task.number} ({len(task.shard)} requests) failed {task.attempts} times, last: "
                              f"{reason}; finished results are written: --resume runs the rest")
        if left:
            self.log(f"batchllm: {reason}; its {left:,} unanswered requests go to another worker")
            self.queue.appendleft(task)

    def _forward_stop(self) -> None:
        if self.stop.requested and not self.stop_sent:
            self.stop_sent = True
            for _, worker in self.running.values():
                worker.actor.stop.remote()

    def _progress(self) -> Progress:
        live = [t.running for t in self.tallies if t.running is not None]
        return Progress(len(self.answered), self.total, sum(t.prefill_tokens for t in self.tallies),
                        sum(t.decode_tokens for t in self.tallies), sum(p.kv_used for p in live),
                        sum(p.kv_total for p in live), time.perf_counter() - self.started)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_shards(shards: Sequence[Shard], workers: Sequence[Worker], on_event: Callable[[Event], None],
               on_progress: Callable[[Progress], None], stop: StopRequest,
               log: Callable[[str], None] = lambda line: None) -> DistributedRun:
    """Run `shards` (in the order workers should take them) on `workers`; call `on_event` once per
    request answered. The workers are killed when this returns or raises (a second signal included)."""
    try:
        return _Driver(shards, workers, on_event, on_progress, stop, log).run()
    finally:
        for w in workers:
            ray.kill(w.actor)
