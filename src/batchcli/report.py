"""What a run says on stderr besides the progress: its header, its end-of-run summary, how to resume it.

Invariant: every line stands alone in a log. When stderr is no terminal (cron, a log file) each line
carries a timestamp, as the progress lines do; the header names the input and where records go, the
summary where they went and which requests failed first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from batchcli.progress import stamp
from batchcli.io.sinks import Sinks


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


class Reporter:
    """`say`: a line unless --quiet; `tell`: a line even with --quiet (what the user must act on)."""

    def __init__(self, console: Console, *, quiet: bool) -> None:
        self.console, self.quiet = console, quiet

    def say(self, line: str) -> None:
        if not self.quiet:
            self.tell(line)

    def tell(self, line: str) -> None:
        self.console.print(line if self.console.is_terminal else f"{stamp()} {line}", highlight=False)


def stdin_note(source: str) -> str | None:
    """A line for a person who typed `-` at a terminal: the command now waits for their input."""
    if source != "-" or sys.stdin is None or not sys.stdin.isatty():
        return None
    return "batchllm: reading JSONL from stdin (the terminal); end it with Ctrl-D"


def destination(output: str, errors: str | None) -> str:
    where = "stdout" if output == "-" else output
    return where if errors is None else f"{where} (error lines to {errors})"


def header(source: str, output: str, errors: str | None) -> str:
    return f"batchllm: run {'stdin' if source == '-' else source} -> {destination(output, errors)}"


def outcome(sinks: Sinks, output: str, errors: str | None) -> list[str]:
    """Where this run's records went and, when some failed, by which codes and which requests first."""
    counts, codes = sinks.counts, sinks.error_codes
    results, failed = plural(counts.successes, "result"), plural(counts.errors, "error line")
    where = "stdout" if output == "-" else output
    lines = [f"batchllm: wrote {results} and {failed} to {where}" if errors is None
             else f"batchllm: wrote {results} to {where} and {failed} to {errors}"]
    if codes:
        first = ", ".join(f"{rid} ({code})" for rid, code in sinks.first_failed)
        lines.append(f"batchllm: {plural(counts.errors, 'error line')}: "
                     + ", ".join(f"{n:,} {code}" for code, n in codes.items()) + f"; first: {first}")
    return lines


def resume_hint(source: str, output: str) -> str:
    if output == "-":
        return "batchllm: interrupted; the finished results went to stdout (a job on stdout cannot be resumed)"
    return (f"batchllm: interrupted; finished results are in {output}. Finish the job (its options are kept in "
            f"{Path(output).name}.job.json) with: batchllm run {source} -o {output} --resume")
