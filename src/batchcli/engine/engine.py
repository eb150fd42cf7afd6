"""The engine loop: schedule -> run -> postprocess, until every sequence of the plan has finished.

Invariant: each request's result is emitted exactly once, as soon as its last sample finishes; a stop
request (SIGINT/SIGTERM) stops admission, and the loop ends when the running sequences are done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from batchcli.engine.attention import get_backend, resolve_backend
from batchcli.engine.config import EngineConfig
from batchcli.engine.decoding import Decoder
from batchcli.engine.kv_pool import BlockPool, mem_available_bytes, parse_kv_budget
from batchcli.engine.model import allocate_kv, kv_bytes_per_token
from batchcli.engine.runner import ModelRunner
from batchcli.engine.sampler import Sampler
from batchcli.engine.step import StepBatch
from batchcli.engine.policies import SchedulerConfig
from batchcli.engine.scheduler import Scheduler
from batchcli.engine.stopping import StopChecker
from batchcli.engine.weights import eos_token_ids, load_model
from batchcli.errors import UsageError
from batchcli.pipeline import PreparedJob
from batchcli.progress import Progress
from batchcli.requests import SamplingParams
from batchcli.results import Completion, Result

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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

    def summary(self, wall: float) -> str:
        total = self.prompt_tokens + self.completion_tokens
        return (f"batchllm: {self.requests:,} requests in {wall:.1f}s (model load {self.model_load_s:.1f}s): "
                f"{total / max(wall, 1e-9):,.0f} tok/s total, {self.completion_tokens / max(self.run_s, 1e-9):,.0f} "
                f"output tok/s; prefix sharing saved {100 * self.saving_ratio:.1f}% of prefill; "
                f"{self.steps:,} steps, {self.preemptions} preemptions, peak KV {self.peak_kv_bytes / 2**20:,.0f} MiB")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The asked dtype; for "auto", bf16 on GPU, and on CPU whichever of bf16/fp32 multiplies faster here
    (bf16 is ~3.5x faster with AMX, but slower than fp32 on CPUs that emulate it)."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cpu":
        return torch.bfloat16
    return min((torch.bfloat16, torch.float32), key=_matmul_seconds)


def _matmul_seconds(dtype: torch.dtype, reps: int = 3) -> float:
    a = torch.randn(256, 576).to(dtype)  # a step-sized activation of a small model
    w = torch.randn(1536, 576).to(dtype)
    a @ w.T  # warm-up: first calls pick kernels
    started = time.perf_counter()
    for _ in range(reps):
        a @ w.T
    return time.perf_counter() - started


class Engine:
    def __init__(self, model_dir: Path, config: EngineConfig, decode: Callable[[list[int]], str]) -> None:
        started = time.perf_counter()
        self.config = config
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        try:
            self.attention = resolve_backend(config.attention, self.device)
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.model = load_model(model_dir, self.dtype, self.device, get_backend(self.attention))
        self.eos_ids = frozenset(eos_token_ids(model_dir))
        self.stopper = StopChecker(decode, self.eos_ids)
        self.load_s = time.perf_counter() - started

    def describe(self) -> str:
        return f"device {self.device.type}, {str(self.dtype).removeprefix('torch.')}, attention {self.attention}"

    def _pool_blocks(self, job: PreparedJob, block_size: int) -> int:
        per_token = kv_bytes_per_token(self.model.spec)
        available = (torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else mem_available_bytes())
        try:
            blocks = parse_kv_budget(self.config.kv_budget, per_token, block_size, available)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if self.config.kv_budget == "auto":  # never more than the whole job could ever hold at once
            outputs = sum(r.params.max_tokens * r.params.n for r in job.batch.requests)
            seqs = job.plan.stats.sequences
            need = job.plan.stats.physical_prefill_tokens + outputs + seqs * block_size
            blocks = max(1, min(blocks, -(-need // block_size)))
        return blocks

    def run(self, job: PreparedJob, on_result: Callable[[Result], None], on_progress: Callable[[Progress], None],
            stop: StopRequest, log: Callable[[str], None] = lambda line: None) -> RunStats:
        """Execute the job's plan; call `on_result` once per finished request."""
        started = time.perf_counter()
        block_size = job.plan.settings.block_size
        num_blocks = self._pool_blocks(job, block_size)
        per_block = block_size * kv_bytes_per_token(self.model.spec)
        log(f"batchllm: KV pool {num_blocks * per_block / 2**20:,.0f} MiB ({num_blocks:,} blocks of {block_size} "
            f"tokens, --kv-budget {self.config.kv_budget}), {self.config.token_budget:,} tokens per step")
        pool = BlockPool(num_blocks)
        runner = ModelRunner(self.model, allocate_kv(self.model.spec, num_blocks, block_size, self.device),
                             block_size, self.device)
        sched = Scheduler(job.plan, job.batch.tokens, [r.params for r in job.batch.requests], pool,
                          SchedulerConfig(block_size=block_size, token_budget=self.config.token_budget,
                                          order=self.config.schedule, admission=self.config.admission))
        results = _Results(job, on_result)
        decoder = Decoder(Sampler(self.config.seed), job.grammars, self.eos_ids)
        while True:
            if stop.requested:
                sched.stop_admitting()
            step = sched.schedule()
            if step is None:
                break
            self._step(step, runner, sched, decoder, results)
            c = sched.counters
            on_progress(Progress(results.done, len(job.batch.requests), c.prefill_tokens, c.decode_tokens,
                                 pool.num_used, num_blocks, time.perf_counter() - started))
        c = sched.counters
        return RunStats(
            model_load_s=self.load_s, run_s=time.perf_counter() - started, requests=results.done,
            prompt_tokens=results.prompt_tokens, completion_tokens=results.completion_tokens,
            cached_tokens=results.cached_tokens, prefill_tokens_computed=c.prefill_tokens,
            decode_tokens=c.decode_tokens, saving_ratio=job.plan.stats.saving_ratio, steps=c.steps,
            preemptions=c.preemptions, kv_blocks=num_blocks, peak_kv_blocks=c.peak_blocks,
            peak_kv_bytes=c.peak_blocks * block_size * kv_bytes_per_token(self.model.spec), device=self.device.type,
            dtype=str(self.dtype).removeprefix("torch."), attention=self.attention,
        )

    def _step(self, step: StepBatch, runner: ModelRunner, sched: Scheduler, decoder: Decoder, results: _Results) -> None:
        """Run one step, sample, and retire the sequences that finished (or failed to sample)."""
        logits = runner.run(step)  # [num_sampling_chunks, vocab]
        seqs = [sched.seq(c.seq_id) for c in step.chunks if c.sample]
        params = [results.params(s.request) for s in seqs]
        draws = decoder.sample(logits, params, [s.seq_id for s in seqs], [s.sample for s in seqs],
                               [s.generated for s in seqs], [results.prompt(s.request) for s in seqs])
        # a failed row still hands the scheduler a token (placeholder 0) so its step accounting holds; the
        # sequence is finished just below and the placeholder is never returned
        sched.on_step_done(step, {s.seq_id: (d.token if d.failure is None else 0) for s, d in zip(seqs, draws)})
        for s, p, d in zip(seqs, params, draws):
            if d.failure is not None:
                completion = Completion("", (), "error", error=d.failure)
            else:
                completion = self.stopper.check(s.generated, p)
            if completion is not None:
                sched.finish(s.seq_id)
                results.add(s.request, s.sample, decoder.finished(s.seq_id, completion, p), s.private_start)


class _Results:
    """Collects the samples of each request and emits its Result once all n are done."""

    def __init__(self, job: PreparedJob, on_result: Callable[[Result], None]) -> None:
        self._requests = job.batch.requests
        self._lengths = job.batch.tokens.lengths
        self._tokens = job.batch.tokens
        self._on_result = on_result
        self._pending: dict[int, dict[int, Completion]] = {}
        self.done = self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0

    def params(self, request: int) -> SamplingParams:
        return self._requests[request].params

    def prompt(self, request: int) -> np.ndarray:
        return self._tokens[request]

    def add(self, request: int, sample: int, completion: Completion, cached: int) -> None:
        got = self._pending.setdefault(request, {})
        got[sample] = completion
        n = self._requests[request].params.n
        if len(got) < n:
            return
        del self._pending[request]
        result = Result(self._requests[request], tuple(got[i] for i in range(n)), int(self._lengths[request]), cached)
        self._on_result(result)
        self.done += 1
        self.prompt_tokens += result.prompt_tokens * n
        self.completion_tokens += result.completion_tokens
        self.cached_tokens += cached * n
