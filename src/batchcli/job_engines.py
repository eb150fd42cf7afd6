"""Where a job's engines run: in this process on the whole job as one shard, or on Ray workers
over the job cut into shards (batchcli.distributed); either way this process receives every event.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Callable

from batchcli.distributed import ClusterOptions
from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine, RunStats, StopRequest
from batchcli.engine.events import Event
from batchcli.engine.resume import Checkpointing
from batchcli.errors import UsageError
from batchcli.model_store import cache_dir
from batchcli.pipeline import PreparedJob
from batchcli.planning.shard import Shard
from batchcli.planning.sharding import ShardSet, make_shards, pull_loads, skew
from batchcli.progress import Progress
from batchcli.report import plural

if TYPE_CHECKING:  # imports ray
    from batchcli.distributed.driver import DistributedRun


class InProcess:
    """The engine in this process, on the whole job as one shard."""

    def __init__(self, checkpointing: Checkpointing | None) -> None:
        self.checkpointing = checkpointing

    def run(self, job: PreparedJob, config: EngineConfig, on_event: Callable[[Event], None],
            on_progress: Callable[[Progress], None], stop: StopRequest, say: Callable[[str], None]) -> RunStats:
        shard = job.shard()
        engine = Engine(job.model_dir, config, job.tokenizer.decode, native_cache=cache_dir(),
                        work_tokens=shard.work_tokens, block_size=job.plan.settings.block_size, log=say)
        say(f"batchllm: {_counts(job)}; {engine.describe()}")
        return engine.run(shard, on_event, on_progress, stop, log=say, checkpoint=self.checkpointing,
                          grammars=job.grammars)

    def metrics(self) -> dict:
        return {}


class OnCluster:
    """Engines on Ray workers (batchcli.distributed), the job cut by sharding.make_shards; this process is
    the driver and the only writer. In-flight checkpoints are single-process only: a killed run
    resumes from the answered lines."""

    def __init__(self, options: ClusterOptions) -> None:
        try:
            from batchcli.distributed.cluster import run_on_cluster
        except ModuleNotFoundError as e:
            if e.name != "ray":
                raise
            raise UsageError("--workers and --ray-address need Ray: pip install 'batchllm[ray]'") from None
        self.options, self._run = options, run_on_cluster
        self.done: DistributedRun | None = None
        self.cut: ShardSet | None = None

    def run(self, job: PreparedJob, config: EngineConfig, on_event: Callable[[Event], None],
            on_progress: Callable[[Progress], None], stop: StopRequest, say: Callable[[str], None]) -> RunStats:
        say(f"batchllm: {_counts(job)}")
        whole = job.shard()

        def split(workers: int) -> list[Shard]:
            self.cut = make_shards(whole, workers)
            return [whole.subset(part.index) for part in self.cut.parts]

        self.done = self._run(self.options, split, job.model_dir, config, on_event, on_progress, stop, log=say,
                              work_tokens=whole.work_tokens, block_size=job.plan.settings.block_size)
        return self.done.stats

    def metrics(self) -> dict:
        """Per worker: its counts and the estimated seconds of the shards it ran; the balance: skew
        (max/mean - 1) estimated for pulling the shards, and measured over the workers' run times."""
        if self.done is None or self.cut is None:
            return {}
        costs = [part.cost for part in self.cut.parts]
        workers = [{**asdict(w), "estimated_s": sum(costs[s] for s in w.shards)} for w in self.done.workers]
        balance = {"shards": len(costs), "skew_estimated": skew(pull_loads(costs, len(workers))),
                   "skew_measured": skew([w.run_s for w in self.done.workers]),
                   "recomputed_prefill_tokens": self.cut.recomputed_prefill_tokens}
        return {"workers": workers, "balance": balance, "retries": [asdict(r) for r in self.done.retries]}


def _counts(job: PreparedJob) -> str:
    return (f"{plural(len(job.tokenized.requests), 'request')}, {plural(len(job.tokenized.errors), 'error line')}, "
            f"{job.skipped:,} already answered")
