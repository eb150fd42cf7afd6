"""One whole `run` job as a library call: resolve the model, open the output, prepare, execute, report.

Invariant: every input line is answered exactly once across runs: error lines and results are written
as they are known, and with `resume` lines already answered in the output are skipped.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import orjson
from rich.console import Console

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine, RunStats
from batchcli.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SOME_FAILED, UsageError
from batchcli.formats import render_error, render_result
from batchcli.models import pending_conversion, resolve_model
from batchcli.pipeline import PreparedJob, prepare
from batchcli.plan import PlanSettings
from batchcli.progress import ProgressView
from batchcli.reader import OPENAI_DEFAULTS
from batchcli.requests import SamplingParams
from batchcli.results import Result
from batchcli.token_text import TokenText
from batchcli.writer import OutputWriter, WriteCounts


@dataclass(frozen=True, slots=True)
class RunOptions:
    output: str  # path or "-"
    order: str = "completion"  # completion | input
    resume: bool = False
    overwrite: bool = False
    plan_file: Path | None = None
    metrics: Path | None = None
    errors: str | None = None  # a separate file for error lines (OpenAI's error file); None: the output
    served_model_name: str | None = None  # the name OpenAI lines must ask for; None: the model directory's

    def __post_init__(self) -> None:
        if self.order not in ("completion", "input"):
            raise ValueError(f"--order must be completion or input, got {self.order!r}")
        if self.errors is not None and self.errors == self.output:
            raise ValueError(f"--errors {self.errors!r} must be another file than the output")


class StopFlag:
    """Set by SIGINT/SIGTERM: the first signal stops admitting work, the second stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None


class _Sinks:
    """Where records go: error lines to the errors writer when there is one, everything else to the output."""

    def __init__(self, output: OutputWriter, errors: OutputWriter | None) -> None:
        self.output, self.errors = output, errors

    def write(self, record: dict, key: int) -> None:
        if self.errors is not None and record.get("error") is not None:
            self.errors.write(record)
        else:
            self.output.write(record, key=key)

    @property
    def counts(self) -> WriteCounts:
        a, b = self.output.counts, (self.errors.counts if self.errors is not None else WriteCounts(0, 0))
        return WriteCounts(a.successes + b.successes, a.errors + b.errors)


def run_job(source: str, model: str | None, defaults: SamplingParams, settings: PlanSettings,
            config: EngineConfig, options: RunOptions, *, console: Console, quiet: bool,
            openai_defaults: SamplingParams = OPENAI_DEFAULTS) -> int:
    """Run the job and return the exit code (0, 3 if some lines failed, 130/143 if interrupted).

    Plain lines start from `defaults`, OpenAI batch lines from `openai_defaults`."""
    if options.resume and options.output == "-":
        raise UsageError("--resume needs an output file (-o FILE), not stdout")
    started = time.perf_counter()
    say = (lambda line: None) if quiet else (lambda line: console.print(line, highlight=False))
    if (note := pending_conversion(model)) is not None:
        say(note)
    model_dir = resolve_model(model)
    stop = StopFlag()
    served = options.served_model_name or model_dir.name
    with ExitStack() as stack:
        writer = stack.enter_context(OutputWriter(options.output, order=options.order, resume=options.resume,
                                                  overwrite=options.overwrite))
        errors = None if options.errors is None else stack.enter_context(
            OutputWriter(options.errors, order="completion", resume=options.resume, overwrite=options.overwrite))
        sinks = _Sinks(writer, errors)
        done = set(writer.done_ids()) | (set(errors.done_ids()) if errors is not None else set())
        job = prepare(source, defaults, settings, model_dir, plan_file=options.plan_file, done_ids=done,
                      openai_defaults=openai_defaults, served_model=served)
        if options.order == "input":
            in_output = [] if errors is not None else [e.line for e in job.batch.errors]
            writer.expect(sorted([r.line for r in job.batch.requests] + in_output))
        for e in job.batch.errors:
            sinks.write(render_error(e, None), key=e.line)
        stats = _execute(job, config, sinks, served, stop, console, quiet, say) if job.batch.requests else None
        counts = sinks.counts
    if not job.batch.requests:
        say(f"batchllm: nothing to run ({len(job.batch.errors):,} error lines, {job.skipped:,} already answered)")
    wall = time.perf_counter() - started
    if options.metrics is not None and stats is not None:
        metrics = {"wall_s": wall, **asdict(stats), "errors": counts.errors, "results": counts.successes}
        options.metrics.write_bytes(orjson.dumps(metrics, option=orjson.OPT_INDENT_2))
    if stop.requested:
        # how to resume is worth a line even with --quiet
        console.print(f"batchllm: interrupted; finished results are in {options.output}. Finish the job with: "
                      f"batchllm run {source} -o {options.output} --resume", highlight=False)
        return EXIT_SIGTERM if stop.signal == signal.SIGTERM else EXIT_SIGINT
    if stats is not None:
        say(stats.summary(wall))
    return EXIT_SOME_FAILED if counts.errors else EXIT_OK


def _execute(job: PreparedJob, config: EngineConfig, sinks: _Sinks, served: str, stop: StopFlag, console: Console,
             quiet: bool, say: Callable[[str], None]) -> RunStats | None:
    """Load the engine and run the plan, writing results as they finish; None if stopped at once."""
    engine = Engine(job.model_dir, config, job.tokenizer.decode)
    say(f"batchllm: {len(job.batch.requests):,} requests, {len(job.batch.errors):,} error lines, "
        f"{job.skipped:,} already answered; {engine.describe()}")
    created = int(time.time())
    wants_logprobs = any(r.params.logprobs is not None for r in job.batch.requests)
    names = TokenText(job.tokenizer.tok) if wants_logprobs else None

    def emit(result: Result) -> None:
        sinks.write(render_result(result, model=served, created=created, names=names), key=result.request.line)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ProgressView(console, quiet=quiet) as view:
            return engine.run(job, emit, view.update, stop, log=say)
    except KeyboardInterrupt:
        stop.signal = stop.signal or signal.SIGINT
        return None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
