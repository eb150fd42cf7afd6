"""Rendering engine progress on stderr: a rich bar on a terminal, plain periodic lines otherwise (cron).

The engine only emits `Progress` snapshots; this module decides how (and whether) they are shown. A
plain line stands alone in a log: it carries a timestamp, the request rate and an ETA.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn


@dataclass(frozen=True, slots=True)
class Progress:
    done: int  # requests finished
    total: int  # requests to run
    prefill_tokens: int  # prompt tokens computed so far
    decode_tokens: int  # tokens generated so far
    kv_used: int  # KV blocks in use
    kv_total: int
    elapsed: float  # seconds since the engine started


def rates(p: Progress) -> str:
    t = max(p.elapsed, 1e-9)
    return (f"prefill {p.prefill_tokens / t:,.0f} tok/s  decode {p.decode_tokens / t:,.0f} tok/s  "
            f"KV {100 * p.kv_used / max(p.kv_total, 1):.0f}%")


class ProgressView:
    """Context manager; call `update(p)` as often as you like. `bar=False` keeps to plain lines even on a
    terminal: when results stream to the same terminal, a live bar would have them written onto its line."""

    def __init__(self, console: Console, *, quiet: bool, log_every: float = 10.0, bar: bool = True) -> None:
        self._want_bar = bar
        self._console = console
        self._quiet = quiet
        self._log_every = log_every
        self._last_log = 0.0
        self._bar: RichProgress | None = None
        self._task = None

    def __enter__(self) -> ProgressView:
        if not self._quiet and self._want_bar and self._console.is_terminal:
            self._bar = RichProgress(
                TextColumn("[bold]requests"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rates]}"),
                TimeRemainingColumn(), console=self._console, transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("run", total=None, rates="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def update(self, p: Progress, *, force: bool = False) -> None:
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=p.done, total=p.total, rates=rates(p))
            return
        now = time.monotonic()
        if force or now - self._last_log >= self._log_every:
            self._last_log = now
            print(f"{stamp()} batchllm: {p.done:,}/{p.total:,} requests  {p.done / max(p.elapsed, 1e-9):,.2f} req/s  "
                  f"{rates(p)}  {p.elapsed:.0f}s elapsed, ETA {eta(p)}", file=sys.stderr, flush=True)


def stamp() -> str:
    """The local time that starts every log line written where no terminal shows when it came."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def eta(p: Progress) -> str:
    """Time left at the rate so far, as 1h02m / 3m05s / 12s; "unknown" before the first request finishes."""
    if p.done == 0:
        return "unknown"
    left = round(p.elapsed / p.done * (p.total - p.done))
    hours, rest = divmod(left, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
