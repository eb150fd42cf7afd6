"""The status of a job's output, for a person at another terminal or a cron wrapper (`batchllm status`).

A run that writes a regular file keeps `OUT.status.json` beside it: its pid, its state (running,
finished, interrupted), its counts and its last progress snapshot, replaced whole (write, then rename)
every few seconds and at the end. `job_status` reads it together with the lock (is a run writing now?),
the job record (input, options) and the output itself (what is answered), so it also tells the truth
about a run that was killed: the lock is free while the status file still says "running".
Invariant: reading a status never changes or locks anything.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import orjson

from batchcli.errors import OutputError
from batchcli.io.lock import holder
from batchcli.io.output_meta import job_record_path
from batchcli.progress import Progress, eta, rates, stamp
from batchcli.io.writer import WriteCounts, scan_answered

REFRESH_S = 2.0


def status_path(output: Path) -> Path:
    return output.with_name(output.name + ".status.json")


class StatusFile:
    """The running job's side of the status: `update` with each progress snapshot, `finish` at the end."""

    def __init__(self, output: Path, counts: Callable[[], WriteCounts], *, requests: int, skipped: int) -> None:
        self.path, self.counts = status_path(output), counts
        self.doc = {"version": 1, "pid": os.getpid(), "started": stamp(), "state": "running", "requests": requests,
                    "skipped": skipped, "progress": None}
        self._last = 0.0
        self._write()

    def update(self, p: Progress) -> None:
        self.doc["progress"] = asdict(p)
        if time.monotonic() - self._last >= REFRESH_S:
            self._write()

    def finish(self, state: str) -> None:
        self.doc["state"] = state
        self._write()

    def _write(self) -> None:
        self._last = time.monotonic()
        c = self.counts()
        doc = {**self.doc, "updated": stamp(), "results": c.successes, "error_lines": c.errors}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            os.replace(tmp, self.path)
        except OSError:
            pass  # the status is a courtesy to onlookers: a full disk must not stop the run for it


def job_status(output: Path) -> dict:
    """What is known of the job writing or written to `output`, as one JSON object."""
    record = _load(job_record_path(output))
    if record is None and not output.exists():
        raise OutputError(f"no job at {str(output)!r}: neither it nor its job record {job_record_path(output).name} exists")
    record = record or {}
    run = _load(status_path(output)) or {}
    pid = holder(output)
    answered = {"results": 0, "error_lines": 0}
    errors = (record.get("options") or {}).get("--errors")
    for path in (output, *([Path(errors)] if errors else [])):
        if path.is_file():
            a, _ = scan_answered(path)
            answered["results"] += len(a.ids)
            answered["error_lines"] += len(a.lines)
    source = record.get("input")
    lines = _count_lines(source)
    done = answered["results"] + answered["error_lines"]
    state = ("running" if pid is not None else
             "stopped without finishing (killed?)" if run.get("state") == "running" else run.get("state", "unknown"))
    return {"output": str(output), "state": state, "pid": pid, "input": source, "input_lines": lines,
            "answered": done, **answered, "left": None if lines is None else max(lines - done, 0),
            "options": record.get("options"), "run": run or None}


def status_lines(doc: dict) -> list[str]:
    """`job_status` for a person."""
    head = f"{doc['output']}: {doc['state']}" + (f" (pid {doc['pid']})" if doc["pid"] else "")
    run = doc["run"] or {}
    if run:
        head += f"; last run started {run['started']}, updated {run['updated']}"
    of = "" if doc["input_lines"] is None else f" of {doc['input_lines']:,} lines"
    out = [head, f"  input {doc['input']}: answered {doc['answered']:,}{of} ({doc['results']:,} results, "
                 f"{doc['error_lines']:,} error lines)" + ("" if doc["left"] is None else f", {doc['left']:,} left")]
    if run.get("progress"):
        p = Progress(**run["progress"])
        out.append(f"  last run: {p.done:,}/{p.total:,} requests in {p.elapsed:.0f}s, {rates(p)}"
                   + (f", ETA {eta(p)}" if doc["state"] == "running" else ""))
    if doc["state"] != "running" and doc["left"]:
        flags = " ".join(f"{k} {v}" for k, v in (doc["options"] or {}).items())
        out.append(f"  batchllm run {doc['input']} -o {doc['output']} --resume would run the {doc['left']:,} lines "
                   "left" + (f" with the job's options: {flags}" if flags else ""))
    return out


def _load(path: Path) -> dict | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if type(doc) is dict else None


def _count_lines(source: object) -> int | None:
    """Non-blank lines of a regular input file (each is answered once); None for stdin or a pipe."""
    if type(source) is not str or source == "-":
        return None
    try:
        if not stat.S_ISREG(os.stat(source).st_mode):
            return None
        with open(source, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return None
