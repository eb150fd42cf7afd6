"""The typer command classes of `batchllm`: the one error handler around every command, `--help` shown
as a flag, and `run`, whose `--resume` takes the options of the job it finishes from its job record.

Invariant: a user error never leaves a traceback: every error of errors.TABLE becomes one line on
stderr (or, for a silent row, none) and its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from batchcli.errors import EngineConfigError, row_for

err = Console(stderr=True, soft_wrap=True)  # a log line is one line, whatever the width (cron, log files)


class _BareHelp:
    """--help is a flag: shown as one, not as `--help <bool>`."""

    def get_help_option(self, ctx: typer.Context):  # noqa: ANN201 - click's signature
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


# EngineConfig fields whose flag is not the field's name spelled with dashes
_FLAG_OF = {"max_running": "--admission"}


def _in_flags(exc: BaseException) -> str:
    """The error's message, an engine setting named by the flag that sets it."""
    if isinstance(exc, EngineConfigError):
        return f"{_FLAG_OF.get(exc.setting, '--' + exc.setting.replace('_', '-'))}: {exc.reason}"
    return str(exc)


class Commands(_BareHelp, typer.core.TyperGroup):
    """The one error handler around every command: errors.TABLE gives the message prefix and exit code."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except (Exception, KeyboardInterrupt) as exc:
            row = row_for(exc)
            if row is None:
                raise
            message = row.message if row.message is not None else _in_flags(exc)
            if not row.silent:
                err.print(f"[red]{row.prefix}:[/red] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(row.exit_code) from None


# Options that belong to one invocation, not to the job: never kept in the job record, never taken from it.
_PER_INVOCATION = frozenset({"output", "resume", "overwrite", "quiet", "metrics"})


def _flag(param: typer.core.TyperOption) -> str:
    return next(o for o in param.opts if o.startswith("--"))


def _kept(value: object) -> object:
    """An option's value as the job record keeps it (JSON)."""
    return list(value) if isinstance(value, (tuple, list)) else str(value) if isinstance(value, Path) else value


def _job_params(ctx: typer.Context) -> list[typer.core.TyperOption]:
    return [p for p in ctx.command.params if p.param_type_name == "option" and p.name in ctx.params
            and p.name not in _PER_INVOCATION]


def job_options(ctx: typer.Context) -> dict[str, object]:
    """The job's options to keep in its record: those set to other than their default."""
    return {_flag(p): _kept(ctx.params[p.name]) for p in _job_params(ctx)
            if ctx.params[p.name] not in (None, False, (), []) and ctx.params[p.name] != p.default}


class Command(_BareHelp, typer.core.TyperCommand):
    pass


class RunCommand(Command):
    """`run`, whose --resume takes the options of the job it finishes from the job record."""

    def invoke(self, ctx: typer.Context):  # noqa: ANN201 - click's signature
        if ctx.params.get("resume"):
            from batchcli.job_options import resume_options
            from batchcli.io.output_meta import default_output, job_record_path, read_job_options

            output = Path(ctx.params["output"] or default_output(ctx.params["input"]))
            recorded = read_job_options(output)
            params = {_flag(p): p for p in _job_params(ctx)}
            given = {flag: _kept(ctx.params[p.name]) for flag, p in params.items()
                     if ctx.get_parameter_source(p.name).name not in ("DEFAULT", "DEFAULT_MAP")}
            taken = {} if recorded is None else resume_options(recorded, given, job_record_path(output))
            for flag, value in taken.items():
                if flag in params:  # an option of a later version is not this command's to take
                    ctx.params[params[flag].name] = params[flag].process_value(ctx, value)
        return super().invoke(ctx)
