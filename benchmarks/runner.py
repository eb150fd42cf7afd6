"""Runs the benchmark: every bench on every engine it names, engines alternating run by run.

Pass 1 runs everything once (transformers and the batchllm ablations only here: they are slow or
single-engine); later passes repeat the batchllm (fused and eager) and vLLM runs while the time budget
allows, so the report can take medians. Invariant: a run during which other processes used more than
`noise_limit` of the machine's CPU is re-run once; the re-run replaces it, flagged if still noisy.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.peers.base import Job, Peer, RunOutcome
from benchmarks.peers.batchllm import BatchllmPeer
from benchmarks.peers.hf_embed import HfEmbedPeer
from benchmarks.peers.remote import hf_peer, vllm_missing, vllm_peer
from benchmarks.pooled import SHARING_OFF, PooledBuilt, build_pooled, pooled_benches
from benchmarks.workloads import Built, ablation_bench, benches, build

VLLM_KV_BYTES = 4 * 2**30  # VLLM_CPU_KVCACHE_SPACE=4, the best setting measured here
# One max_model_len for every vLLM start: it is part of vLLM's torch.compile cache key, so a constant
# lets later start-ups reuse the compiled graph instead of compiling for minutes again.
VLLM_MAX_MODEL_LEN = 2048
ABLATIONS = (
    ("default", ()),
    ("sharing-off", ("--sharing", "off")),
    ("sharing-single", ("--sharing", "single")),
    ("schedule-input", ("--schedule", "input")),
    ("admission-16", ("--admission", "16")),
    ("attention-torch", ("--attention", "torch")),
    ("attention-gather", ("--attention", "gather")),
)
# The batchllm engines: the same CLI, told apart by the flags they add to every run
BATCHLLM_FLAGS = {"batchllm": (), "batchllm-eager": ("--compile", "off")}


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    model: Path
    dtype: str  # float32 | bfloat16, passed to every engine
    peers: tuple[str, ...]
    only: tuple[str, ...]  # bench names to run; empty = all
    repeats: int
    budget_s: float  # wall budget for repeat passes
    noise_limit: float
    work_dir: Path
    run_timeout_s: float
    batchllm_exe: Path  # the `batchllm` executable under test

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not 0 < self.noise_limit < 1:
            raise ValueError(f"noise_limit must be in (0, 1), got {self.noise_limit}")


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A peer that cannot run here; every job gets the reason as its error."""

    name: str
    reason: str

    def run(self, job: Job) -> RunOutcome:
        return RunOutcome(peer=self.name, workload=job.workload, variant=job.variant, error=self.reason)

    def close(self) -> None:
        """Nothing was started."""


def kv_bytes_per_token(model: Path, dtype: str) -> int:
    c = json.loads((model / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * (4 if dtype == "float32" else 2)


@dataclass
class Peers:
    """One engine instance per (engine, KV budget); built lazily, closed together."""

    s: Settings
    max_model_len: int
    made: dict[tuple[str, int | None], Peer] = field(default_factory=dict)

    def get(self, name: str, built: Built | PooledBuilt) -> Peer:
        kv = built.kv_budget_tokens if name == "vllm" else None
        key = (name, kv)
        if key not in self.made:
            self.made[key] = self._make(name, built, kv)
        return self.made[key]

    def _make(self, name: str, built: Built | PooledBuilt, kv: int | None) -> Peer:
        logs = self.s.work_dir / "logs"
        if name in BATCHLLM_FLAGS:
            return BatchllmPeer(self.s.model, self.s.dtype, self.s.batchllm_exe, name, BATCHLLM_FLAGS[name])
        if name == "transformers-embed":
            return HfEmbedPeer(self.s.model, self.s.dtype, built.bench.hf_inputs)
        if name == "transformers":
            return hf_peer(self.s.model, self.s.dtype, logs, 16 if self.s.quick else "auto")
        if name == "vllm":
            missing = vllm_missing()
            if missing:
                return Unavailable(name, missing)
            if kv is None:
                return vllm_peer(self.s.model, self.s.dtype, logs, VLLM_KV_BYTES, self.max_model_len)
            kv_bytes = kv * kv_bytes_per_token(self.s.model, self.s.dtype)
            # vLLM refuses a KV cache smaller than max_model_len; only then use the workload's own need
            max_len = self.max_model_len if kv >= self.max_model_len else built.max_prompt + built.max_tokens
            return vllm_peer(self.s.model, self.s.dtype, logs, kv_bytes, max_len, f"vllm-kv{kv}")
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(BATCHLLM_FLAGS)}, transformers, vllm")

    def close(self) -> None:
        for peer in self.made.values():
            peer.close()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def describe(o: RunOutcome) -> str:
    if not o.ok:
        return f"ERROR {o.error[:200]}"
    tok = o.prompt_tokens + o.completion_tokens
    return f"total {o.total_s:7.1f} s  gen {o.gen_s:7.1f} s  {tok / max(o.gen_s, 1e-9):8.0f} tok/s  others {o.others_share:.0%}"


def checked(s: Settings, peer: Peer, job: Job) -> RunOutcome:
    """Run once; re-run once if others used too much CPU, keeping the re-run."""
    first = peer.run(job)
    if not first.ok or first.others_share <= s.noise_limit:
        return first
    log(f"    others used {first.others_share:.0%} of the CPU: re-running")
    second = peer.run(job)
    extra = second.extra | {"reruns": 1, "noisy": second.others_share > s.noise_limit}
    return replace(second, extra=extra)


def run_all(s: Settings) -> tuple[list[Built | PooledBuilt], list[RunOutcome]]:
    chosen = [b for b in benches(s.quick) + [ablation_bench(s.quick)] if not s.only or b.name in s.only]
    pooled = [b for b in pooled_benches(s.quick) if not s.only or b.name in s.only]
    if not chosen and not pooled:
        raise ValueError(f"--only {','.join(s.only)} matches no bench")
    built: list[Built | PooledBuilt] = [build(b, s.work_dir / "inputs") for b in chosen]
    built += [build_pooled(b, s.work_dir / "inputs") for b in pooled]
    peers = Peers(s, max_model_len=max([VLLM_MAX_MODEL_LEN] + [b.max_prompt + b.max_tokens for b in built]))
    results: list[RunOutcome] = []
    pass_cost: dict[tuple[str, str], float] = {}
    t_start = time.perf_counter()
    try:
        for k in range(s.repeats):
            planned = plan_pass(s, built, k)
            estimate = sum(pass_cost.get((b.bench.name, name), 0.0) for b, name, _ in planned)
            if k > 0 and time.perf_counter() - t_start + estimate > s.budget_s:
                log(f"stopping after {k} pass(es): another would pass the {s.budget_s:.0f} s budget")
                break
            for b, name, (variant, flags) in planned:
                kv = b.kv_budget_tokens if name in BATCHLLM_FLAGS else None  # vLLM's is fixed at its start-up
                job = Job(b.bench.name, b.path, s.work_dir / "runs" / b.bench.name / f"pass{k}", b.max_tokens,
                          kv, variant, flags, s.run_timeout_s)
                job.out_dir.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                outcome = checked(s, peers.get(name, b), job)
                # a repeat pass will not pay a worker's one-time start-up again
                pass_cost[(b.bench.name, name)] = time.perf_counter() - t0 - outcome.extra.get("worker_start_s", 0.0)
                log(f"[{time.perf_counter() - t_start:6.0f} s] pass {k} {b.bench.name:15} {name + ' ' + job.variant:24} {describe(outcome)}")
                results.append(replace(outcome, extra=outcome.extra | {"pass": k}))
    finally:
        peers.close()
    return built, results


def plan_pass(s: Settings, built: list[Built | PooledBuilt],
              k: int) -> list[tuple[Built | PooledBuilt, str, tuple[str, tuple[str, ...]]]]:
    """The runs of pass k: engines rotate by bench and pass so none always runs first. A pooled
    workload runs batchllm with and without prefix sharing (a variant); transformers engines run in pass 0 only."""
    plan = []
    for i, b in enumerate(built):
        if b.bench.name == "ablation":
            if k == 0 and "batchllm" in s.peers:
                plan += [(b, "batchllm", a) for a in ABLATIONS]
            continue
        names = [p for p in b.bench.peers if p in s.peers and (k == 0 or not p.startswith("transformers"))]
        runs = [(name, variant) for name in names
                for variant in ((("", ()), SHARING_OFF) if isinstance(b, PooledBuilt) and name == "batchllm"
                                else (("", ()),))]
        shift = (i + k) % max(len(runs), 1)
        plan += [(b, name, variant) for name, variant in runs[shift:] + runs[:shift]]
    return plan
