"""One engine worker: loads the model once, then runs the shards it is handed, streaming their events.

The class knows nothing of Ray: the driver makes it an actor (cluster.start_workers), so it also runs
as a plain object. `run` is a generator: the engine loop runs in a thread of the worker and its events
are yielded in small deliveries as they come, so the driver writes results while the shard still runs.
Invariant: each event of a shard is yielded exactly once; the last delivery of a shard that ran to its
end carries the shard's RunStats; an exception of the engine ends the generator with that exception.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine, RunStats
from batchcli.engine.events import Event
from batchcli.planning.shard import Shard
from batchcli.errors import BatchError, WorkerError
from batchcli.model_config import eos_token_ids
from batchcli.model_store import cache_dir
from batchcli.planning.plan import PlanSettings
from batchcli.planning.grammars import compile_grammars
from batchcli.progress import Progress
from batchcli.planning.tokenize import PromptTokenizer

DELIVERY_S = 0.2  # how long finished events wait in a worker before they are sent (a delivery per yield)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    node: str  # host name
    threads: int  # torch's CPU threads in this worker
    device: str  # the engine's description ("device cpu, float32")
    load_s: float  # seconds to load the model


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a worker sends at a time: the events finished since the last delivery, the latest progress."""

    events: tuple[Event, ...]
    progress: Progress | None  # of the shard running; None when nothing ran since the last delivery
    stats: RunStats | None = None  # only on a shard's last delivery


class _Flag:
    """The engine's stop request, set from another thread of the worker (ShardWorker.stop)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    @property
    def requested(self) -> bool:
        return self._event.is_set()


_DONE = object()


class ShardWorker:
    """An engine and its tokenizer on one node; `threads` (None: torch's default) CPU threads."""

    def __init__(self, model_dir: Path, config: EngineConfig, threads: int | None, work_tokens: int = 0,
                 block_size: int = PlanSettings().block_size) -> None:
        """`work_tokens`: this worker's expected share of the job, `block_size`: the job's (see Engine)."""
        self._model_dir, self._config, self._threads = Path(model_dir), config, threads
        self._work_tokens, self._block_size = work_tokens, block_size
        self._stop = threading.Event()
        self._engine: Engine | None = None
        self._tokenizer: PromptTokenizer | None = None

    def load(self) -> WorkerInfo:
        """Load the model; a model directory this node cannot read is a one-line WorkerError naming the node."""
        node = socket.gethostname()
        if not (self._model_dir / "config.json").is_file():
            raise WorkerError(f"model directory {self._model_dir} is not readable on node {node}: every node of the "
                              "cluster needs the model at the same path")
        if self._threads is not None:
            torch.set_num_threads(self._threads)  # the fused ops follow torch's thread count
        try:
            self._tokenizer = PromptTokenizer(self._model_dir)
            self._engine = Engine(self._model_dir, self._config, self._tokenizer.decode, native_cache=cache_dir(),
                                  work_tokens=self._work_tokens, block_size=self._block_size)
        except BatchError as e:
            raise WorkerError(f"the worker on node {node} cannot load {self._model_dir}: {e}") from None
        return WorkerInfo(node, torch.get_num_threads(), self._engine.describe(), self._engine.load_s)

    def stop(self) -> None:
        """Stop admitting new requests (the running ones finish); shards handed out later run nothing new."""
        self._stop.set()

    def run(self, shard: Shard) -> Iterator[Delivery]:
        """Run `shard`, yielding its events in deliveries (at most one per DELIVERY_S) as they finish."""
        if self._engine is None or self._tokenizer is None:
            raise RuntimeError("ShardWorker.run before load()")
        grammars = compile_grammars((p.constraint for p in shard.params), self._tokenizer,
                                    lambda: eos_token_ids(self._model_dir))
        items: queue.SimpleQueue = queue.SimpleQueue()  # events and Progress, then _DONE
        outcome: dict[str, object] = {}

        def work() -> None:
            try:
                outcome["stats"] = self._engine.run(shard, items.put, items.put, _Flag(self._stop), grammars=grammars)
            except BaseException as e:  # handed to the caller below, in the worker's own thread
                outcome["error"] = e
            finally:
                items.put(_DONE)

        thread = threading.Thread(target=work, name="engine", daemon=True)
        thread.start()
        yield from _deliveries(items)
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        yield Delivery((), None, outcome["stats"])


def _deliveries(items: queue.SimpleQueue) -> Iterator[Delivery]:
    """Group the engine's events and progress into deliveries, one per DELIVERY_S at most, until _DONE."""
    events: list[Event] = []
    progress: Progress | None = None
    deadline = time.monotonic() + DELIVERY_S
    while True:
        try:
            item = items.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            item = None
        if item is _DONE:
            if events or progress is not None:
                yield Delivery(tuple(events), progress)
            return
        if isinstance(item, Progress):
            progress = item
        elif item is not None:
            events.append(item)
        if time.monotonic() >= deadline:
            if events or progress is not None:
                yield Delivery(tuple(events), progress)
            events, progress = [], None
            deadline = time.monotonic() + DELIVERY_S
