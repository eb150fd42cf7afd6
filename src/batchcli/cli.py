"""The `batchllm` command line: parse options, build configs, call the library, render.

Data goes to stdout (results with `-o -`, the plan with `plan -o -`, the dry-run summary); progress,
logs and errors go to stderr. One handler around every command (`commands.Commands.invoke`) turns the errors
of errors.TABLE into one line on stderr and their exit code; anything else is a bug and keeps its
traceback. Choices and defaults come from batchcli.choices and the config dataclasses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import orjson
import typer
from rich.console import Console

from batchcli.choices import Compile, Device, DType, InputKind, Order, Schedule, Sharing, parse_admission
from batchcli.engine.attention import attention_help
from batchcli.engine.config import EngineConfig
from batchcli.commands import Command, Commands, RunCommand, err, job_options
from batchcli.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from batchcli.formats.openai_body import openai_body_fields
from batchcli.planning.plan import PlanSettings
from batchcli.params import SamplingParams
from batchcli.io.streams import install_lenient_stderr

ENGINE, PLAN = EngineConfig(), PlanSettings()  # the defaults the help shows and unset options fall back to
out = Console()


IO, MODEL, SAMPLING = "Input and output", "Model", "Sampling defaults (a line's own fields win)"
ENGINE_PANEL, CLUSTER = "Engine and plan", "Many workers (Ray)"


app = typer.Typer(
    cls=Commands, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
    help="Offline, throughput-first batch inference: JSONL prompts in, JSONL completions out.\n\n"
    "Shared prompt prefixes are found across the whole file first, computed once, and kept exactly as long as needed.",
)
RUN_EXAMPLES = """
[bold]Examples[/bold]

  batchllm run prompts.jsonl -o answers.jsonl
  batchllm run prompts.jsonl -o answers.jsonl --resume        [dim]# finish a killed run[/dim]
  batchllm run - -o - < prompts.jsonl | jq -r '[.id, .text] | @tsv'   [dim]# in a pipeline, ids kept[/dim]
  batchllm run big.jsonl -o big.out.jsonl --quiet --metrics m.json   [dim]# from cron[/dim]
  batchllm run big.jsonl -o big.out.jsonl --workers 4             [dim]# 4 engine workers on a local Ray cluster[/dim]
  batchllm run chats.jsonl --max-tokens 128 --temperature 0.7 --seed 1

Input lines: {"id", "prompt" | "messages" | "prompt_token_ids", "max_tokens", "temperature", ...}
or OpenAI batch lines ({OPENAI_FIELDS}). Exit codes: 0 all succeeded, 3 some lines got error records, 1 fatal, 2 usage,
130/143 interrupted (rerun with --resume), 141 stdout's reader went away.
"""

RUN_EXAMPLES = RUN_EXAMPLES.replace("{OPENAI_FIELDS}", openai_body_fields())

INPUT_FORMAT_HELP = ("One JSON object per line, or plain text, one prompt per line (a user message through the "
                     "chat template, named line-N).")
SYSTEM_HELP = "A system message before every prompt of a text input (--input-format text)."

PLAN_EXAMPLES = """
[bold]Examples[/bold]

  batchllm plan prompts.jsonl --dry-run          [dim]# show sharing statistics, write nothing[/dim]
  batchllm plan prompts.jsonl -o prompts.plan.json
  batchllm run prompts.jsonl --plan prompts.plan.json -o answers.jsonl

Exit codes as for run: 0 every line is valid, 3 some lines would get error records, 1 fatal, 2 usage.
"""


def _version(value: bool) -> None:
    if value:
        from batchcli import __version__

        out.print(f"batchllm {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", metavar="", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Offline, throughput-first batch inference: JSONL prompts in, JSONL completions out."""


def _defaults(**flags: object) -> tuple[SamplingParams, SamplingParams]:
    """Defaults for plain lines and for OpenAI lines: each side's own, overridden by the flags given.

    A flag left at None (or an empty list, or False for a switch) was not given.
    """
    from dataclasses import replace

    from batchcli.formats.openai_body import OPENAI_DEFAULTS

    given = {k: (tuple(v) if type(v) is list else v) for k, v in flags.items()
             if v is not None and v is not False and v != []}  # `is`: 0 and 0.0 are real values
    try:
        return SamplingParams(**given), replace(OPENAI_DEFAULTS, **given)
    except ValueError as e:  # SamplingParams' checks also judge input lines, whose errors are no usage errors
        raise UsageError(str(e)) from None


@app.command(cls=Command, epilog=PLAN_EXAMPLES)
def plan(
    input: str = typer.Argument(..., metavar="INPUT", help="Input JSONL file, or - for stdin."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Plan file to write (- for stdout). Default: INPUT with .plan.json."),
    dry_run: bool = typer.Option(False, "--dry-run", metavar="", help="Print the summary and the top of the prefix tree; write nothing, load no weights."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the statistics as one JSON object on stdout (for scripts) instead of the summary."),
    model: Optional[str] = typer.Option(None, "--model", help="HF directory, .gguf file or cached hub id (default: $BATCHLLM_MODEL, else SmolLM2-135M-Instruct)."),
    block_size: int = typer.Option(PLAN.block_size, "--block-size", help="KV block size in tokens; shared segments are whole blocks."),
    sharing: Sharing = typer.Option(PLAN.sharing, "--sharing", help="The whole prefix tree, one shared level (BatchLLM) or none."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Default max_tokens (orders decode-heavy groups first); plain lines 256, OpenAI lines the context."),
    n: Optional[int] = typer.Option(None, "--n", help="Default samples per prompt."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="The model name OpenAI lines must ask for (default: the model directory's name); as for run."),
    input_format: InputKind = typer.Option("jsonl", "--input-format", help=INPUT_FORMAT_HELP),
    system: Optional[str] = typer.Option(None, "--system", help=SYSTEM_HELP),
) -> None:
    """Find the shared prefixes of INPUT and write the execution plan (or just show it)."""
    from batchcli.model_store import pending_conversion, resolve_model
    from batchcli.pipeline import not_jsonl_hint, prepare
    from batchcli.planning.plan import plan_to_json
    from batchcli.io.reader import InputOptions
    from batchcli.plan_view import plan_summary, stats_json
    from batchcli.report import stdin_note
    from batchcli.io.side_files import check_writable, write_file

    reading = InputOptions(input_format, system)
    target = output or ("-" if input == "-" else str(Path(input).with_suffix(".plan.json")))
    if (note := pending_conversion(model)) is not None:
        err.print(note, highlight=False)
    if target != "-" and not dry_run:
        check_writable(Path(target), "plan file")
    plain, openai = _defaults(max_tokens=max_tokens, n=n)
    model_dir = resolve_model(model)
    if (note := stdin_note(input)) is not None:
        err.print(note, highlight=False)
    job = prepare(input, plain, PlanSettings(block_size=block_size, sharing=sharing), model_dir, openai_defaults=openai,
                  served_model=served_model_name or model_dir.name, input_options=reading)
    if job.not_jsonl():
        err.print(not_jsonl_hint(input), highlight=False)
    if as_json:
        sys.stdout.buffer.write(stats_json(job) + b"\n")
    elif dry_run:
        plan_summary(job, out)
    code = EXIT_SOME_FAILED if job.tokenized.errors else EXIT_OK  # as `run` would end, so CI can check a file
    if dry_run:
        raise typer.Exit(code)
    data = plan_to_json(job.plan)
    if target == "-" and as_json:
        raise UsageError("--json prints the statistics on stdout; write the plan to a file with -o FILE")
    if target == "-":
        sys.stdout.buffer.write(data + b"\n")
    else:
        write_file(Path(target), data, "plan file")
        if not as_json:
            plan_summary(job, err)
        err.print(f"plan written to {target}", highlight=False)
    raise typer.Exit(code)


@app.command(cls=RunCommand, epilog=RUN_EXAMPLES)
def run(
    ctx: typer.Context,
    input: str = typer.Argument(..., metavar="INPUT", help="Input JSONL file, or - for stdin."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output JSONL (- for stdout). Default: INPUT with .out.jsonl; stdout for stdin input; needed for a pipe input such as <(...).", rich_help_panel=IO),
    order: Optional[Order] = typer.Option(None, "--order", help="Write each line as it finishes (the default), or buffer to input order.", rich_help_panel=IO),
    resume: bool = typer.Option(False, "--resume", metavar="", help="Finish the job of an existing output: skip the lines it answers, and run with the options its job record (OUT.job.json) keeps, unless given again.", rich_help_panel=IO),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace an existing output file.", rich_help_panel=IO),
    model: Optional[str] = typer.Option(None, "--model", help="HF directory, .gguf file or cached hub id (default: $BATCHLLM_MODEL, else SmolLM2-135M-Instruct).", rich_help_panel=MODEL),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="The model name OpenAI lines must ask for and answers carry (default: the model directory's name).", rich_help_panel=MODEL),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Write run metrics (JSON) to this file.", rich_help_panel=IO),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress or summary on stderr: only errors, and what needs acting on (how to resume an interrupted job).", rich_help_panel=IO),
    errors: Optional[str] = typer.Option(None, "--errors", help="Write error lines to this file instead of the output (as OpenAI's error file).", rich_help_panel=IO),
    input_format: InputKind = typer.Option("jsonl", "--input-format", help=INPUT_FORMAT_HELP, rich_help_panel=IO),
    system: Optional[str] = typer.Option(None, "--system", help=SYSTEM_HELP, rich_help_panel=IO),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Default max_tokens (plain lines 256, OpenAI lines the rest of the context).", rich_help_panel=SAMPLING),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default temperature, 0-2 (plain lines 0 = greedy, OpenAI lines 1).", rich_help_panel=SAMPLING),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Default nucleus cut (1 = off).", rich_help_panel=SAMPLING),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Default top-k cut (0 = off).", rich_help_panel=SAMPLING),
    min_p: Optional[float] = typer.Option(None, "--min-p", help="Default min-p cut (0 = off).", rich_help_panel=SAMPLING),
    seed: Optional[int] = typer.Option(None, "--seed", help="Default per-request seed: the same --seed gives the same samples, also across --resume (unseeded requests draw fresh randomness each run).", rich_help_panel=SAMPLING),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Default stop string (repeatable).", rich_help_panel=SAMPLING),
    stop_token_ids: Optional[list[int]] = typer.Option(None, "--stop-token-id", help="Default stop token id (repeatable).", rich_help_panel=SAMPLING),
    n: Optional[int] = typer.Option(None, "--n", help="Default samples per prompt.", rich_help_panel=SAMPLING),
    min_tokens: Optional[int] = typer.Option(None, "--min-tokens", help="Default minimum output tokens before EOS or a stop.", rich_help_panel=SAMPLING),
    presence_penalty: Optional[float] = typer.Option(None, "--presence-penalty", help="Default presence penalty, -2 to 2 (OpenAI's).", rich_help_panel=SAMPLING),
    frequency_penalty: Optional[float] = typer.Option(None, "--frequency-penalty", help="Default frequency penalty, -2 to 2 (OpenAI's).", rich_help_panel=SAMPLING),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", help="Default repetition penalty (transformers'; 1 = off).", rich_help_panel=SAMPLING),
    logprobs: Optional[int] = typer.Option(None, "--logprobs", help="Return log-probabilities with this many alternatives per token (0-20).", rich_help_panel=SAMPLING),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", metavar="", help="Keep generating past EOS up to max_tokens (benchmarks).", rich_help_panel=SAMPLING),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="Use a plan made by `batchllm plan`, with its block size and sharing (refused if made for other data or other settings).", rich_help_panel=ENGINE_PANEL),
    device: Device = typer.Option(ENGINE.device, "--device", help="Where to run (auto: CUDA when present, else the CPU).", rich_help_panel=ENGINE_PANEL),
    dtype: DType = typer.Option(ENGINE.dtype, "--dtype", help="auto: bfloat16 on GPU and on CPUs with native bf16, else float32; float32 is the reproducible choice.", rich_help_panel=ENGINE_PANEL),
    attention: str = typer.Option("auto", "--attention", help=attention_help(), rich_help_panel=ENGINE_PANEL),
    compile: Compile = typer.Option(ENGINE.compile, "--compile", help="Fused CPU ops (C++, built once per machine in about a second, kept in the cache); auto: when already built or the job is big enough.", rich_help_panel=ENGINE_PANEL),
    kv_budget: str = typer.Option(ENGINE.kv_budget, "--kv-budget", help="KV cache size: e.g. 2GiB, 500MB, 50000tok, or auto (a share of free memory).", rich_help_panel=ENGINE_PANEL),
    token_budget: int = typer.Option(ENGINE.token_budget, "--token-budget", help="Tokens computed per step (decodes + prefill chunks).", rich_help_panel=ENGINE_PANEL),
    sharing: Optional[Sharing] = typer.Option(None, "--sharing", help=f"The whole prefix tree, BatchLLM's one shared level, or none (default: {PLAN.sharing}; with --plan, the plan's).", rich_help_panel=ENGINE_PANEL),
    block_size: Optional[int] = typer.Option(None, "--block-size", help=f"KV block size in tokens (default: {PLAN.block_size}; with --plan, the plan's).", rich_help_panel=ENGINE_PANEL),
    schedule: Schedule = typer.Option(ENGINE.schedule, "--schedule", help="Decode-heavy groups first, or input order (ablation).", rich_help_panel=ENGINE_PANEL),
    admission: str = typer.Option("memory", "--admission", help="memory (admit while KV fits) or a fixed cap of running requests (ablation).", rich_help_panel=ENGINE_PANEL),
    checkpoint_every: float = typer.Option(ENGINE.checkpoint_every, "--checkpoint-every", help="Seconds between checkpoints of in-flight sequences beside the output (OUT.ckpt.json); --resume continues them. 0: off.", rich_help_panel=ENGINE_PANEL),
    workers: Optional[int] = typer.Option(None, "--workers", help="Run N engine workers on Ray (pip install 'batchllm\\[ray]'): a local cluster, each worker with its share of the CPU threads or one GPU; this process writes the output. In-flight checkpoints are single-process only: --resume redoes unfinished requests.", rich_help_panel=CLUSTER),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join a running Ray cluster (auto or HOST:PORT): one worker per GPU, or --workers N; the model directory must be readable at the same path on every node.", rich_help_panel=CLUSTER),
) -> None:
    """Run every request of INPUT and write one JSON line per request."""
    from batchcli.distributed import ClusterOptions
    from batchcli.errors import OutputWriteError
    from batchcli.job import RunOptions, run_job
    from batchcli.io.output_meta import default_output
    from batchcli.io.reader import InputOptions

    reading = InputOptions(input_format, system)
    defaults, openai_defaults = _defaults(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed, stop=stop,
        stop_token_ids=stop_token_ids, n=n, min_tokens=min_tokens, presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty, repetition_penalty=repetition_penalty, logprobs=logprobs,
        ignore_eos=ignore_eos)
    plan_flags = {k: v for k, v in (("block_size", block_size), ("sharing", sharing)) if v is not None}
    settings = None if plan_file is not None and not plan_flags else PlanSettings(**plan_flags)
    config = EngineConfig(device=device, dtype=dtype, attention=attention, kv_budget=kv_budget,
                          token_budget=token_budget, schedule=schedule, max_running=parse_admission(admission),
                          compile=compile, checkpoint_every=checkpoint_every)
    cluster = ClusterOptions(workers=workers, address=ray_address)
    options = RunOptions(output=output or default_output(input), **({} if order is None else {"order": order}),
                         resume=resume, overwrite=overwrite, plan_file=plan_file, metrics=metrics, errors=errors,
                         served_model_name=served_model_name, job_options=job_options(ctx), input=reading)
    try:
        code = run_job(input, model, defaults, settings, config, options, console=err, quiet=quiet,
                       openai_defaults=openai_defaults, cluster=cluster)
    except OutputWriteError:
        if options.output == "-":
            _drop_stdout()
        raise
    raise typer.Exit(code)


STATUS_EXAMPLES = """
[bold]Examples[/bold]

  batchllm status answers.jsonl           [dim]# is a run writing it? how far? what would --resume do?[/dim]
  batchllm status answers.jsonl --json    [dim]# the same as one JSON object, for a cron wrapper[/dim]
"""


@app.command(cls=Command, epilog=STATUS_EXAMPLES)
def status(
    output: str = typer.Argument(..., metavar="OUTPUT", help="The output file of a run (its job record and status file lie beside it)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print one JSON object on stdout (for scripts)."),
) -> None:
    """Whether a run is writing OUTPUT, how many lines are answered of how many, its rates and ETA."""
    from batchcli.status import job_status, status_lines

    doc = job_status(Path(output))
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
    else:
        for line in status_lines(doc):
            out.print(line, highlight=False, markup=False, soft_wrap=True)


def _drop_stdout() -> None:
    """Point a dead stdout at /dev/null, so the interpreter's flush at exit does not fail again (exit 120)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass  # stdout has no descriptor (a test runner's buffer): nothing will flush to it at exit


def main() -> None:
    # The command is offline by contract; in its own process it says so to the HF libraries too (the
    # library itself only passes local_files_only and leaves the environment alone).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    install_lenient_stderr()
    app()


if __name__ == "__main__":
    main()
