"""Where the engine workers run: a local Ray cluster started for the job, or an existing one joined.

Invariant: workers are placed so that all of them fit the cluster at once: one GPU each where the
engine runs on GPUs, else an equal share of the cluster's CPUs each (torch threads = that share,
at least one). A cluster this process started is stopped when the job ends; one it joined (or
found already initialised, as a library user's or a test session's) is left running.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import ray

from batchcli.distributed import ClusterOptions
from batchcli.distributed.driver import DistributedRun, Worker, run_shards
from batchcli.distributed.worker import ShardWorker
from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import StopRequest
from batchcli.engine.events import Event
from batchcli.planning.shard import Shard
from batchcli.planning.plan import PlanSettings
from batchcli.progress import Progress
from batchcli.errors import BatchError, UsageError, WorkerError


@dataclass(frozen=True, slots=True)
class Placement:
    """What one worker asks of the cluster."""

    num_cpus: float
    num_gpus: int
    threads: int | None  # torch CPU threads; None: torch's default (a GPU worker)


@contextmanager
def connected(options: ClusterOptions) -> Iterator[None]:
    """Ray initialised for the job: joined, already there, or a local cluster started (and stopped after)."""
    if ray.is_initialized():
        yield
        return
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        if options.address is None:
            ray.init(num_cpus=os.cpu_count() or 1, **quiet)
        else:
            ray.init(address=options.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = "a local Ray cluster" if options.address is None else f"the Ray cluster at {options.address}"
        raise WorkerError(f"cannot start or join {where}: {str(e).strip().splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()


def placements(options: ClusterOptions, on_gpu: bool) -> list[Placement]:
    """One placement per worker, from the connected cluster's resources."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if on_gpu:
        workers = options.workers or gpus
        if workers > gpus:
            raise UsageError(f"--workers {workers} asks for one GPU each, but the cluster has {gpus}")
        return [Placement(num_cpus=min(1.0, cpus / workers), num_gpus=1, threads=None)] * workers
    if options.workers is None:
        raise UsageError("the Ray cluster has no GPU for the engine; say how many CPU workers to start with --workers N")
    share = cpus / options.workers
    return [Placement(num_cpus=share, num_gpus=0, threads=max(1, int(share)))] * options.workers


def start_workers(where: list[Placement], model_dir: Path, config: EngineConfig,
                  worker_cls: type[ShardWorker] = ShardWorker, work_tokens: int = 0,
                  block_size: int = PlanSettings().block_size) -> list[Worker]:
    """Start one actor per placement and load the model in each (in parallel); a worker that cannot
    is a one-line error naming its node, and the others are stopped. `work_tokens` is the job's
    (each worker expects its share), `block_size` its plans' (see Engine)."""
    actors = []
    for p in where:
        # two calls at once: a shard streaming out of `run`, and `stop` arriving while it runs
        remote = ray.remote(max_concurrency=2, max_restarts=0, num_cpus=p.num_cpus, num_gpus=p.num_gpus)(worker_cls)
        actors.append(remote.remote(model_dir, config, p.threads, work_tokens // len(where), block_size))
    try:
        infos = ray.get([a.load.remote() for a in actors])
    except ray.exceptions.RayTaskError as e:
        _kill(actors)
        if isinstance(e.cause, BatchError):
            raise e.cause from None
        raise WorkerError(f"an engine worker failed to load the model: {type(e.cause).__name__}: {e.cause}") from None
    except ray.exceptions.RayActorError as e:
        _kill(actors)
        raise WorkerError(f"an engine worker died while starting (is batchllm installed on every node?): "
                          f"{str(e).strip().splitlines()[0]}") from None
    return [Worker(i, a, info) for i, (a, info) in enumerate(zip(actors, infos))]


def _kill(actors: list) -> None:
    for a in actors:
        ray.kill(a)


def run_on_cluster(options: ClusterOptions, split: Callable[[int], Sequence[Shard]], model_dir: Path,
                   config: EngineConfig,
                   on_event: Callable[[Event], None], on_progress: Callable[[Progress], None], stop: StopRequest,
                   log: Callable[[str], None] = lambda line: None,
                   worker_cls: type[ShardWorker] = ShardWorker, work_tokens: int = 0,
                   block_size: int = PlanSettings().block_size) -> DistributedRun:
    """Start or join the cluster, start its engine workers, and run the shards `split(workers)` gives
    on them (see driver.run_shards); `work_tokens` and `block_size` are the whole job's (see Engine)."""
    with connected(options):
        on_gpu = config.device == "cuda" or (config.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
        workers = start_workers(placements(options, on_gpu), model_dir, config, worker_cls, work_tokens, block_size)
        shards = split(len(workers))
        nodes = len({w.info.node for w in workers})
        log(f"batchllm: {len(workers)} engine workers on {nodes} node{'s' if nodes > 1 else ''} "
            f"({workers[0].info.threads} CPU threads each, {workers[0].info.device}), {len(shards)} shards")
        return run_shards(shards, workers, on_event, on_progress, stop, log)
