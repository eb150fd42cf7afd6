"""Worker side of a peer process: load an engine once, then run timed jobs sent one JSON line each.

Runs inside the peer's own interpreter (the vLLM venv has neither batchcli nor orjson), so it uses
the standard library only. Protocol, one JSON object per line: the worker writes {"ready": true,
"startup_s"} once loaded; each job line {"workload", "out", "options"} gets exactly one reply line,
{"ok": true, <metrics>} or {"ok": false, "error"}; EOF on stdin ends the worker.
Invariant: replies go only to the pipe whose fd the harness passes in $BENCH_REPLY_FD; stdout and
stderr are free for library logs and progress bars, so a stray print can never corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

REPLY_FD_ENV = "BENCH_REPLY_FD"


@dataclass(frozen=True, slots=True)
class Generation:
    """What an engine returns for one job; outputs are in the order of the prompts given."""

    token_ids: list[list[int]]
    texts: list[str]
    cached_tokens: int  # prompt tokens the engine served from its prefix cache instead of computing
    extra: dict  # engine-specific facts for the report (batch size chosen, ...)


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], max_tokens: list[int], options: dict) -> Generation: ...


def read_workload(path: str) -> tuple[list[str], list[list[int]], list[int]]:
    ids, prompts, max_tokens = [], [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                ids.append(row["id"])
                prompts.append(row["prompt_token_ids"])
                max_tokens.append(row["max_tokens"])
    return ids, prompts, max_tokens


def run_job(engine: Engine, job: dict) -> dict:
    ids, prompts, max_tokens = read_workload(job["workload"])
    t0 = time.perf_counter()
    gen = engine.generate(prompts, max_tokens, job.get("options", {}))
    gen_s = time.perf_counter() - t0
    with open(job["out"], "w") as f:
        for rid, toks, text in zip(ids, gen.token_ids, gen.texts, strict=True):
            f.write(json.dumps({"id": rid, "token_ids": toks, "text": text}) + "\n")
    return {
        "ok": True,
        "gen_s": gen_s,
        "prompt_tokens": sum(len(p) for p in prompts),
        "completion_tokens": sum(len(t) for t in gen.token_ids),
        "cached_tokens": gen.cached_tokens,
        **gen.extra,
    }


def serve(load: Callable[[], Engine]) -> None:
    """Load the engine, announce readiness, then answer job lines until stdin closes."""
    t0 = time.perf_counter()
    fd = int(os.environ[REPLY_FD_ENV])
    os.set_inheritable(fd, False)  # engine subprocesses must not hold the reply pipe open
    reply = os.fdopen(fd, "w", buffering=1)
    engine = load()
    reply.write(json.dumps({"ready": True, "startup_s": time.perf_counter() - t0}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = run_job(engine, json.loads(line))
        except Exception as exc:  # a failed job is reported to the harness; the worker lives on
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")
