"""What the harness hands a peer (Job) and what it gets back (RunOutcome), plus process-group control.

Invariant: a peer never raises for an engine failure; a missing install, a crash, a timeout or a
bad metrics file all come back as a RunOutcome with `error` set, so one broken engine cannot stop
the benchmark of the others.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Job:
    workload: str
    path: Path  # input JSONL: {"id", "prompt_token_ids", "max_tokens"} per line
    out_dir: Path  # where the peer writes its outputs and metrics
    max_tokens: int  # largest max_tokens in the workload (the CLI default; lines override it)
    kv_budget_tokens: int | None = None
    variant: str = ""  # ablation label, "" for the engine's defaults
    flags: tuple[str, ...] = ()  # extra batchllm flags for an ablation variant
    timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One timed run. total_s counts start-up (process start or engine build); gen_s does not."""

    peer: str
    workload: str
    variant: str
    error: str | None = None
    total_s: float = 0.0
    gen_s: float = 0.0
    startup_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # as the engine reports it (prefix-cache hits, or tokens served from shared KV)
    computed_prompt_tokens: int = 0  # prompt tokens the engine actually prefilled
    peak_rss_mib: float = 0.0  # batchllm: its process's peak; workers: sum of their processes' peaks so far
    others_share: float = 0.0  # other processes' share of machine CPU during the run
    out_path: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Peer(Protocol):
    name: str

    def run(self, job: Job) -> RunOutcome: ...

    def close(self) -> None: ...


def failed(peer: str, job: Job, error: str, **kw) -> RunOutcome:
    return RunOutcome(peer=peer, workload=job.workload, variant=job.variant, error=error, **kw)


def kill_group(proc: subprocess.Popen) -> None:
    """End a peer and every process it started (each peer runs in its own session/process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(path: Path, chars: int = 800) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return text[-chars:].strip()
