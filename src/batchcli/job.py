"""One whole `run` job as a library call: resolve the model, open the output, prepare, execute, report.

Invariant: every input line is answered exactly once across runs: error lines and results are written
as they are known, and with `resume` lines already answered in the output are skipped. While the job
runs it holds the output's lock, and the output is bound to the job (output_meta), so neither a second
run nor another job's resume can write into it.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import orjson
from rich.console import Console

from batchcli.io.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from batchcli.choices import Order, check
from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import RunStats
from batchcli.engine.resume import Checkpointing
from batchcli.distributed import ClusterOptions
from batchcli.engine.events import Event
from batchcli.results import resolve
from batchcli.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SOME_FAILED, PlanFileError, UsageError
from batchcli.formats.output import render_error, render_pooled, render_result
from batchcli.io.lock import OutputLock
from batchcli.model_store import pending_conversion, resolve_model
from batchcli.io.output_meta import bind_output, has_side_files, refuse_output_is_input
from batchcli.engine.devices import pick_device
from batchcli.parts import LineJoiner
from batchcli.pipeline import PreparedJob, check_input, not_jsonl_hint, prepare
from batchcli.io.reader import InputOptions
from batchcli.io.side_files import check_writable, write_file
from batchcli.planning.plan import PlanSettings
from batchcli.progress import Progress, ProgressView
from batchcli.formats.openai_body import OPENAI_DEFAULTS
from batchcli.requests import LineError
from batchcli.params import SamplingParams
from batchcli.results import Failure
from batchcli.formats.token_text import TokenText
from batchcli.report import Reporter, header, outcome, plural, resume_hint, stdin_note
from batchcli.io.sinks import Sinks
from batchcli.status import StatusFile
from batchcli.io.writer import OutputWriter
from batchcli.job_engines import InProcess, OnCluster


@dataclass(frozen=True, slots=True)
class RunOptions:
    output: str  # path or "-"
    order: Order = "completion"
    resume: bool = False
    overwrite: bool = False
    plan_file: Path | None = None
    metrics: Path | None = None
    errors: str | None = None  # a separate file for error lines (OpenAI's error file); None: the output
    served_model_name: str | None = None  # the name OpenAI lines must ask for; None: the model directory's
    job_options: dict[str, object] = field(default_factory=dict)  # kept in the job record (job_options.py)
    input: InputOptions = InputOptions()  # JSONL or plain text

    def __post_init__(self) -> None:
        check("--order", self.order, Order)
        if self.errors is not None and self.errors == self.output:
            raise UsageError(f"--errors {self.errors!r} must be another file than the output")


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


def run_job(source: str, model: str | None, defaults: SamplingParams, settings: PlanSettings | None,
            config: EngineConfig, options: RunOptions, *, console: Console, quiet: bool,
            openai_defaults: SamplingParams = OPENAI_DEFAULTS, cluster: ClusterOptions = ClusterOptions()) -> int:
    """Run the job and return the exit code (0, 3 if some lines failed, 130/143 if interrupted).

    Plain lines start from `defaults`, OpenAI batch lines from `openai_defaults`; `settings` None: the
    plan file's, else the defaults (see pipeline.prepare). With `cluster` wanted, the engines run on Ray
    workers (batchcli.distributed) and this process writes."""
    if options.resume and options.output == "-":
        raise UsageError("--resume needs an output file (-o FILE), not stdout")
    files_beside = has_side_files(options.output)  # lock, job record, checkpoint: not beside /dev/null or a pipe
    if options.resume and not files_beside:
        raise UsageError(f"--resume needs a regular output file; {options.output} is a device or a pipe")
    started = time.perf_counter()
    report = Reporter(console, quiet=quiet)
    say = report.say
    if (note := pending_conversion(model)) is not None:
        say(note)
    check_input(source)
    on_cluster = OnCluster(cluster) if cluster.wanted else None  # before any work: is Ray installed?
    pick_device(config.device)
    if files_beside:
        check_writable(Path(options.output), "output")
    if options.errors is not None and has_side_files(options.errors):
        check_writable(Path(options.errors), "--errors")
    if options.metrics is not None:
        check_writable(options.metrics, "--metrics")
    if options.plan_file is not None and not Path(options.plan_file).is_file():
        raise PlanFileError(f"plan file {options.plan_file} does not exist")
    model_dir = resolve_model(model, quiet=quiet)
    refuse_output_is_input(source, options.output)
    stop = StopFlag()
    served = options.served_model_name or model_dir.name
    with ExitStack() as stack:
        if files_beside:
            stack.enter_context(OutputLock(options.output))
        writer = stack.enter_context(OutputWriter(options.output, order=options.order, resume=options.resume,
                                                  overwrite=options.overwrite))
        errors = None if options.errors is None else stack.enter_context(
            OutputWriter(options.errors, order="completion", resume=options.resume, overwrite=options.overwrite))
        sinks = Sinks(writer, errors)
        answered = sinks.answered()
        if (note := stdin_note(source)) is not None:
            say(note)
        job = prepare(source, defaults, settings, model_dir, plan_file=options.plan_file, answered=answered,
                      openai_defaults=openai_defaults, served_model=served, input_options=options.input)
        if files_beside:
            bind_output(Path(options.output), job.identity, resumed=bool(answered), source=source, model=model_dir.name,
                        options=options.job_options)
        say(header(source, options.output, options.errors))
        if options.order == "input":
            in_output = [] if errors is not None else [e.line for e in job.tokenized.errors]
            writer.expect(sorted({r.line for r in job.tokenized.requests}.union(in_output)))  # a line's parts: one key
        for e in job.tokenized.errors:
            sinks.write(render_error(e, None), key=e.line)
        engines = on_cluster or InProcess(_checkpointing(job, config, options, say) if files_beside else None)
        watch = StatusFile(Path(options.output), lambda: sinks.counts, requests=len(job.tokenized.requests),
                           skipped=job.skipped) if files_beside else None
        stats, complete = (_execute(job, config, engines, sinks, served, stop, console, quiet, say, watch)
                           if job.tokenized.requests else (None, True))
        counts, codes = sinks.counts, sinks.error_codes
    if not job.tokenized.requests:
        say(f"batchllm: nothing to run ({plural(len(job.tokenized.errors), 'error line')}, {job.skipped:,} already answered)")
    if job.not_jsonl():
        report.tell(not_jsonl_hint(source))  # the one fix for every error line
    wall = time.perf_counter() - started
    if options.metrics is not None:  # also when nothing was left to run: never leave an earlier run's file
        metrics = {"wall_s": wall, "tokenizer_load_s": job.tokenizer_load_s,
                   **(asdict(stats) if stats is not None else {"requests": 0}),
                   "errors": counts.errors, "results": counts.successes, "error_codes": codes, "skipped": job.skipped,
                   **engines.metrics()}
        write_file(options.metrics, orjson.dumps(metrics, option=orjson.OPT_INDENT_2), "--metrics")
    if watch is not None:
        watch.finish("finished" if complete else "interrupted")
    if stop.requested and not complete:
        report.tell(resume_hint(source, options.output))  # the job record holds its options
        return EXIT_SIGTERM if stop.signal == signal.SIGTERM else EXIT_SIGINT
    if stats is not None:
        say(stats.summary(wall))
    for line in outcome(sinks, options.output, options.errors):
        say(line)
    return EXIT_SOME_FAILED if counts.errors else EXIT_OK


def _checkpointing(job: PreparedJob, config: EngineConfig, options: RunOptions,
                   say: Callable[[str], None]) -> Checkpointing | None:
    """Checkpoints beside a file output (a resume first takes over what the last one left in flight)."""
    path = checkpoint_path(Path(options.output))
    restored = {}
    if options.resume:
        restored = load_checkpoint(path, job.identity, job.tokenized.requests, job.tokenizer.vocab_size, say)
        if restored:
            say(f"batchllm: continuing {len(restored):,} requests from checkpoint {path.name}")
    else:
        path.unlink(missing_ok=True)  # another job's, or this output's before --overwrite
    if config.checkpoint_every <= 0 and not restored:
        return None
    return Checkpointing(config.checkpoint_every,
                         lambda in_flight: save_checkpoint(path, job.identity, job.tokenized.requests, in_flight), restored)


# What the user can do about an engine refusal, in this CLI's words (the engine knows no flags)
_REFUSAL_HINTS = {"kv_budget_exceeded": "raise --kv-budget or lower max_tokens",
                  "sampling_failed": "if the model's numbers broke, try --dtype float32"}


def _execute(job: PreparedJob, config: EngineConfig, engines: InProcess | OnCluster, sinks: Sinks, served: str,
             stop: StopFlag, console: Console, quiet: bool, say: Callable[[str], None],
             watch: StatusFile | None) -> tuple[RunStats | None, bool]:
    """Run the job's engines, writing results as they finish and each progress snapshot to the
    progress view and `watch`. Returns the stats (None if stopped at once) and whether every request
    got its line (a stop that came after the work is no stop)."""
    created = int(time.time())
    wants_logprobs = any(r.params.logprobs is not None for r in job.tokenized.requests)
    names = TokenText(job.tokenizer.tok) if wants_logprobs else None

    answered = 0
    pooled = LineJoiner(lambda parts: render_pooled(parts, model=served, created=created), render_error)

    def emit(event: Event) -> None:
        nonlocal answered
        answered += 1
        record = resolve(event, job.tokenized.requests)
        request = record.request
        if request.pooling is not None:  # one part of its line: the line is written when it is whole
            if (line := pooled.add(record)) is not None:
                sinks.write(line, key=request.line)
        elif isinstance(record, Failure):
            code, message = record.code, record.message
            hint = _REFUSAL_HINTS.get(code)
            error = LineError(request.id, request.line, code, f"{message}; {hint}" if hint else message, request.custom_id)
            sinks.write(render_error(error, request.format), key=request.line)
        else:
            sinks.write(render_result(record, model=served, created=created, names=names), key=request.line)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ProgressView(console, quiet=quiet, bar=not sinks.output.on_terminal) as view:
            def progress(p: Progress) -> None:
                view.update(p)
                if watch is not None:
                    watch.update(p)

            stats = engines.run(job, config, emit, progress, stop, say)
        return stats, answered == len(job.tokenized.requests)
    except KeyboardInterrupt:
        stop.signal = stop.signal or signal.SIGINT
        return None, False
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
