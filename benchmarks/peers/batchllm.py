"""Peer: the `batchllm run` CLI, one fresh process per run, exactly as a user would call it.

One class serves every batchllm engine the harness compares: "batchllm" (the defaults) and
"batchllm-eager" (`--compile off`) differ only in the engine-wide `flags` put before a job's own.

total_s is the process's wall time from spawn to exit (imports, model load, the whole file);
gen_s is the run's `wall_s - model_load_s - tokenizer_load_s` from its --metrics file (loading the model
and the tokenizer is start-up, paid once per process, as a vLLM engine's start-up loads both); the prompt tokens it computed
are prompt_tokens x (1 - saving_ratio), its plan's physical prefill. Invariant: the run's CPU
time and peak RSS come from wait4 on the CLI's process, which includes any child it reaped.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.machine import CpuWindow
from benchmarks.peers.base import Job, RunOutcome, failed, kill_group, tail

METRIC_KEYS = ("wall_s", "model_load_s", "tokenizer_load_s", "prompt_tokens", "completion_tokens", "cached_tokens",
               "saving_ratio", "steps", "preemptions", "peak_kv_bytes")
POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Exit:
    rc: int
    wall_s: float
    cpu_s: float
    maxrss_kib: int
    others_share: float


def run_process(argv: list[str], log: Path, timeout_s: float) -> Exit:
    """Run argv in its own process group; kill the group on timeout (rc -9 then)."""
    window = CpuWindow()
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    deadline = t0 + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            kill_group(proc)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it is reaped
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    return Exit(proc.returncode, wall, cpu, usage.ru_maxrss, window.others_share(cpu))


def command(exe: Path, job: Job, model: Path, dtype: str, out: Path, metrics: Path,
            flags: tuple[str, ...] = ()) -> list[str]:
    argv = [str(exe), "run", str(job.path), "-o", str(out), "--overwrite", "--quiet", "--metrics", str(metrics),
            "--model", str(model), "--max-tokens", str(job.max_tokens), "--ignore-eos", "--temperature", "0",
            "--dtype", dtype]
    if job.kv_budget_tokens is not None:
        argv += ["--kv-budget", f"{job.kv_budget_tokens}tok"]
    return argv + list(flags) + list(job.flags)


@dataclass
class BatchllmPeer:
    model: Path
    dtype: str
    exe: Path
    name: str = "batchllm"
    flags: tuple[str, ...] = ()  # CLI flags of this engine on every run, e.g. ("--compile", "off")

    def run(self, job: Job) -> RunOutcome:
        if not self.exe.exists():
            return failed(self.name, job, f"batchllm CLI not found at {self.exe}")
        tag = f"{self.name}{'-' + job.variant if job.variant else ''}"
        out, metrics, log = (job.out_dir / f"{tag}{ext}" for ext in (".jsonl", ".metrics.json", ".log"))
        metrics.unlink(missing_ok=True)
        argv = command(self.exe, job, self.model, self.dtype, out, metrics, self.flags)
        done = run_process(argv, log, job.timeout_s)
        if done.rc != 0:
            why = "timed out" if time_out(done, job) else f"exit {done.rc}"
            return failed(self.name, job, f"{why}: {tail(log)}", total_s=done.wall_s, others_share=done.others_share)
        try:
            m = json.loads(metrics.read_text())
            missing = [k for k in METRIC_KEYS if k not in m]
            if missing:
                raise ValueError(f"missing keys {missing}")
        except (OSError, ValueError) as exc:
            return failed(self.name, job, f"bad metrics file {metrics}: {exc}", total_s=done.wall_s)
        gen_s = m["wall_s"] - m["model_load_s"] - m["tokenizer_load_s"]
        return RunOutcome(
            peer=self.name, workload=job.workload, variant=job.variant,
            total_s=done.wall_s, gen_s=gen_s, startup_s=done.wall_s - gen_s,
            prompt_tokens=m["prompt_tokens"], completion_tokens=m["completion_tokens"], cached_tokens=m["cached_tokens"],
            computed_prompt_tokens=round(m["prompt_tokens"] * (1 - m["saving_ratio"])),
            peak_rss_mib=done.maxrss_kib / 1024, others_share=done.others_share, out_path=str(out),
            extra={k: m[k] for k in ("saving_ratio", "steps", "preemptions", "peak_kv_bytes")},
        )

    def close(self) -> None:
        """Nothing lives between runs: each run is its own process."""


def time_out(done: Exit, job: Job) -> bool:
    return done.wall_s >= job.timeout_s
