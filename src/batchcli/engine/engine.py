"""The engine loop: schedule -> run -> postprocess, until every sequence of the shard's plan has finished.

The engine's input is a Shard (planning.shard) and its output a stream of events (engine.events): both plain data, so
the same loop runs in the CLI's process or in a worker of a cluster. Invariant: each request of the
shard gets exactly one event, an Answer as soon as its last sample finishes, a Pooled as soon as a
pooled request's last prompt token is computed (engine.pooler), or a Refusal (it cannot fit the KV
budget even alone; a sample's logits were not finite) while the others go on; a stop
request (SIGINT/SIGTERM) stops admission, and the loop ends when the running sequences are done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from batchcli.engine.attention import resolve_backend
from batchcli.engine.config import EngineConfig
from batchcli.engine.constraints import Matchers
from batchcli.engine.decoding import Decoder
from batchcli.engine.devices import pick_device, pick_dtype
from batchcli.engine.fused import choose_fused, wants_fused
from batchcli.engine.host_memory import keep_freed_memory, setup_frozen
from batchcli.engine.kv_pool import BlockPool, mem_available_bytes, parse_kv_budget
from batchcli.engine.model import CausalLM, allocate_kv, kv_bytes_per_token
from batchcli.engine.resume import Checkpointing, restore, snapshot
from batchcli.engine.pooler import Pooler
from batchcli.engine.runner import ModelRunner
from batchcli.engine.sampler import Sampler
from batchcli.engine.step import StepBatch
from batchcli.engine.policies import SchedulerConfig
from batchcli.engine.scheduler import Scheduler
from batchcli.engine.shard_events import ShardEvents, refuse_misfits
from batchcli.engine.stopping import StopChecker
from batchcli.engine.weights import load_model
from batchcli.engine.events import Event
from batchcli.errors import EngineConfigError, KVBudgetError
from batchcli.model_config import eos_token_ids
from batchcli.planning.plan import PlanSettings
from batchcli.planning.shard import Shard
from batchcli.progress import Progress

class StopRequest(Protocol):
    @property
    def requested(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RunStats:
    model_load_s: float
    run_s: float
    requests: int
    prompt_tokens: int  # logical: every sequence's whole prompt
    completion_tokens: int
    cached_tokens: int  # prompt tokens read from shared segments instead of computed per sequence
    prefill_tokens_computed: int
    decode_tokens: int
    saving_ratio: float
    steps: int
    preemptions: int
    kv_blocks: int
    peak_kv_blocks: int
    peak_kv_bytes: int
    device: str
    dtype: str
    attention: str
    native_build_s: float  # seconds spent loading (or building, on first use) the fused CPU ops

    def summary(self, wall: float) -> str:
        """One line; both rates over the generation time (one clock: the output rate never exceeds the total)."""
        total, run = self.prompt_tokens + self.completion_tokens, max(self.run_s, 1e-9)
        return (f"batchllm: {self.requests:,} {'request' if self.requests == 1 else 'requests'} in {wall:.1f}s "
                f"(model load {self.model_load_s:.1f}s, generation {self.run_s:.1f}s): {total / run:,.0f} tok/s "
                f"(prompt + output), {self.completion_tokens / run:,.0f} output tok/s over the generation; prefix sharing saved {100 * self.saving_ratio:.1f}% of prefill; "
                f"{self.steps:,} steps, {self.preemptions} preemptions, peak KV {self.peak_kv_bytes / 2**20:,.0f} MiB")


class Engine:
    """A loaded model and every choice about how it runs, made once here and never changed after:
    device, dtype, the attention backend, and whether the fused CPU ops run (engine.fused). Runs any
    number of shards, one at a time."""

    def __init__(self, model_dir: Path, config: EngineConfig, decode: Callable[[list[int]], str], *,
                 native_cache: Path | None = None, work_tokens: int = 0, block_size: int = PlanSettings().block_size,
                 log: Callable[[str], None] = lambda line: None) -> None:
        """`native_cache`: where the fused CPU ops are built and kept (None: they are not used);
        `work_tokens`: the tokens this engine is expected to compute (prefill after sharing + output
        budget), by which compile "auto" judges whether building the fused ops pays; `block_size`: that
        of the plans it will run (the fused ops need a multiple of 16)."""
        started = time.perf_counter()
        self.config = config
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        try:
            eager = resolve_backend(config.attention, self.device.type)
        except ValueError as e:
            raise EngineConfigError("attention", str(e)) from None
        model = load_model(model_dir, self.dtype, self.device, eager)
        self.build_s = 0.0
        ops = None
        if wants_fused(config.compile, config.attention, self.device, native_cache is not None):
            built = time.perf_counter()
            ops = choose_fused(config.compile, config.attention, model.arch, self.dtype, block_size, work_tokens,
                               native_cache, log)
            self.build_s = time.perf_counter() - built
        # packing for the fused ops replaces the row-major weights: one model, never two
        self.model = model if ops is None else CausalLM(model.arch, model.weights, model.backend, ops)
        self.attention = eager if ops is None else "native"
        self.block_size = block_size
        self.kv_token_bytes = kv_bytes_per_token(self.model.arch, self.dtype)
        self.eos_ids = frozenset(eos_token_ids(model_dir))
        self.stopper = StopChecker(decode, self.eos_ids)
        self.load_s = time.perf_counter() - started

    def describe(self) -> str:
        return f"device {self.device.type}, {str(self.dtype).removeprefix('torch.')}"

    def _available_bytes(self) -> int:
        return torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else mem_available_bytes()

    def _pool_blocks(self, shard: Shard, block_size: int) -> int:
        per_token = self.kv_token_bytes
        available = self._available_bytes()
        try:
            blocks = parse_kv_budget(self.config.kv_budget, per_token, block_size, available)
        except ValueError as e:
            raise EngineConfigError("kv_budget", str(e)) from None
        if blocks * block_size * per_token > available:
            raise KVBudgetError(f"a KV budget of {self.config.kv_budget} asks for {_gib(blocks * block_size * per_token)} "
                                f"of KV cache, but only {_gib(available)} of memory is available")
        if self.config.kv_budget == "auto":  # never more than the whole shard could ever hold at once
            stats = shard.plan.stats
            need = stats.physical_prefill_tokens + shard.output_budget + stats.sequences * block_size
            blocks = max(1, min(blocks, -(-need // block_size)))
        return blocks

    def _allocate_kv(self, num_blocks: int, block_size: int) -> torch.Tensor:
        try:
            return allocate_kv(self.model.arch, self.dtype, num_blocks, block_size, self.device)
        except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError (CUDA: its OOM subclass)
            if not isinstance(e, MemoryError) and "alloc" not in str(e).lower() and "memory" not in str(e).lower():
                raise
            asked = num_blocks * block_size * self.kv_token_bytes
            raise KVBudgetError(f"cannot allocate {_gib(asked)} of KV cache (KV budget {self.config.kv_budget}); "
                                f"{_gib(self._available_bytes())} of memory is available; lower the KV budget") from None

    def run(self, shard: Shard, on_event: Callable[[Event], None], on_progress: Callable[[Progress], None],
            stop: StopRequest, log: Callable[[str], None] = lambda line: None,
            checkpoint: Checkpointing | None = None, grammars: Matchers | None = None) -> RunStats:
        """Execute the shard's plan; call `on_event` once per request, with its Answer or Refusal.

        `grammars` holds the compiled output constraints of the shard's requests (None: no request has
        one). With `checkpoint` (restored samples by job-level request index), start from its restored
        samples, and hand it the in-flight state every `checkpoint.every_s` seconds and once when the
        loop ends (empty when everything finished)."""
        started = time.perf_counter()
        block_size = shard.plan.settings.block_size
        if self.model.fused is not None and block_size != self.block_size:
            raise ValueError(f"this engine's fused ops were chosen for block size {self.block_size}, the shard has {block_size}")
        num_blocks = self._pool_blocks(shard, block_size)
        per_block = block_size * self.kv_token_bytes
        log(f"batchllm: KV pool {num_blocks * per_block / 2**20:,.0f} MiB ({num_blocks:,} blocks of {block_size} "
            f"tokens, KV budget {self.config.kv_budget}), {self.config.token_budget:,} tokens per step, "
            f"attention {self.attention}")
        results = ShardEvents(shard, on_event)
        misfits = refuse_misfits(shard, num_blocks, block_size, results)
        pool = BlockPool(num_blocks)
        runner = ModelRunner(self.model, self._allocate_kv(num_blocks, block_size), block_size, self.device)
        sched = Scheduler(shard.plan, shard.tokens, list(shard.params), pool,
                          SchedulerConfig(block_size=block_size, token_budget=self.config.token_budget,
                                          order=self.config.schedule, max_running=self.config.max_running),
                          refused=misfits)
        pooler = Pooler(shard.tasks(), [sched.seq(i) for r in range(len(shard)) if r not in misfits
                                        for i in sched.seq_ids(r)])
        sampler = Sampler()
        decoder = Decoder(sampler, grammars, self.eos_ids)
        if checkpoint is not None:
            position = {r: i for i, r in enumerate(shard.index)}
            restored = {position[r]: s for r, s in checkpoint.restored.items() if r in position}
            results.started.update(restored)
            restore(restored, sched, sampler, self.stopper, results.params, results.add)
        with setup_frozen():
            while True:
                if stop.requested:
                    sched.stop_admitting()
                step = sched.schedule()
                if step is None:
                    break
                self._step(step, runner, sched, decoder, pooler, results)
                if checkpoint is not None and checkpoint.due():
                    checkpoint.save(snapshot(results.started, sched, sampler, shard.index))
                c = sched.counters
                on_progress(Progress(results.done, len(shard), c.prefill_tokens, c.decode_tokens,
                                     pool.num_used, num_blocks, time.perf_counter() - started))
        if checkpoint is not None:
            checkpoint.save(snapshot(results.started, sched, sampler, shard.index))
        c = sched.counters
        return RunStats(
            model_load_s=self.load_s, run_s=time.perf_counter() - started, requests=results.done,
            prompt_tokens=results.prompt_tokens, completion_tokens=results.completion_tokens,
            cached_tokens=results.cached_tokens, prefill_tokens_computed=c.prefill_tokens,
            decode_tokens=c.decode_tokens, saving_ratio=shard.plan.stats.saving_ratio, steps=c.steps,
            preemptions=c.preemptions, kv_blocks=num_blocks, peak_kv_blocks=c.peak_blocks,
            peak_kv_bytes=c.peak_blocks * block_size * self.kv_token_bytes, device=self.device.type,
            dtype=str(self.dtype).removeprefix("torch."), attention=self.attention, native_build_s=self.build_s,
        )

    def _step(self, step: StepBatch, runner: ModelRunner, sched: Scheduler, decoder: Decoder, pooler: Pooler,
              results: ShardEvents) -> None:
        """Run one step, sample or pool, and retire the sequences that finished (or failed to sample)."""
        whole = pooler.whole_chunks(step)
        hidden = runner.run(step, whole)
        pooler.add_rows(step, whole, hidden.whole)
        seqs = [sched.seq(c.owner.seq_id) for c in step.chunks if c.sample]
        tasks = [pooler.task(s.request) for s in seqs]
        needs_logits = [i for i, t in enumerate(tasks) if t is None or t.kind == "logits"]
        logits = runner.logits(hidden.sampled[needs_logits]) if needs_logits else None  # [len(needs_logits), vocab]
        row = {i: k for k, i in enumerate(needs_logits)}
        gen = [i for i, t in enumerate(tasks) if t is None]
        tokens = dict.fromkeys((s.seq_id for s in seqs), 0)  # a pooled row hands the scheduler a placeholder
        draws = {}
        if gen:
            gen_seqs = [seqs[i] for i in gen]
            params = [results.params(s.request) for s in gen_seqs]
            sampled = decoder.sample(logits[[row[i] for i in gen]], params, [s.seq_id for s in gen_seqs],
                                     [s.sample for s in gen_seqs], [s.generated for s in gen_seqs],
                                     [results.prompt(s.request) for s in gen_seqs])
            draws = dict(zip(gen, zip(params, sampled)))
            # a failed row also hands over a placeholder so the step accounting holds; the sequence is
            # finished just below and the placeholder is never returned
            tokens.update((s.seq_id, d.token if d.failure is None else 0) for s, d in zip(gen_seqs, sampled))
        sched.on_step_done(step, tokens)
        for i, s in enumerate(seqs):
            if tasks[i] is not None:
                sched.finish(s.seq_id)
                values = pooler.finish(s, hidden.sampled[i], logits[row[i]] if i in row else None)
                results.pooled(s.request, values, s.private_start)
                continue
            p, d = draws[i]
            results.started.add(s.request)
            if d.failure is not None:
                sched.finish(s.seq_id)
                decoder.release(s.seq_id)
                results.fail(s.request, "sampling_failed",
                             f"{d.failure} at output token {len(s.generated)} of sample {s.sample}")
                continue
            completion = self.stopper.check(s.generated, p)
            if completion is not None:
                sched.finish(s.seq_id)
                results.add(s.request, s.sample, decoder.finished(s.seq_id, completion, p), s.private_start)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB"
