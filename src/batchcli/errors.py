"""Every error a user can cause, and the one table that maps them to a CLI message and exit code.

Invariant: every failure a user can cause is a `BatchError` subclass defined here, with a one-line
message that names what was wrong; the CLI's one handler (cli.main) prints `PREFIX: message` (no
traceback) and exits with the code of the first row of `TABLE` the error is an instance of. The
modules that raise these errors import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_SIGINT = 130
EXIT_SIGPIPE = 141  # what a shell reports for a writer whose reader went away (`| head -3`)
EXIT_SIGTERM = 143


class BatchError(Exception):
    """A failure the user can fix."""


class UsageError(BatchError, ValueError):
    """Options that contradict each other or are out of range. A ValueError too, so that a config's
    validation (which raises it) reads to library callers as the ValueError STYLE promises."""


class EngineConfigError(BatchError, ValueError):
    """An engine setting that is out of range or cannot work on this machine. `setting` names the
    EngineConfig field, so that the CLI can name its flag; the engine itself knows no flags."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting, self.reason = setting, reason


class ModelNotFoundError(BatchError):
    """No model at the path, id or default that was asked for."""


class UnsupportedModelError(BatchError, ValueError):
    """A checkpoint whose architecture or option this model code does not implement."""


class CheckpointError(BatchError, ValueError):
    """A checkpoint directory whose files or tensors do not match its config."""


class InputError(BatchError):
    """The input as a whole cannot be read (missing file, unreadable stream)."""


class ReaderError(InputError):
    """The input as a whole cannot be read; bad single lines are `LineError`s instead."""


class InputUnreadableError(ReaderError):
    """The input path cannot be opened (missing, a directory, no permission)."""


class PlanFileError(BatchError):
    """A plan file that is malformed, of another version, or made for other data."""


class KVBudgetError(BatchError):
    """The KV budget cannot hold even one sequence of the job."""


class WorkerError(BatchError):
    """Engine workers (--workers, --ray-address) cannot start or load the model, or a shard keeps failing."""


class OutputError(BatchError):
    """The output cannot be written (exists without --resume/--overwrite, unwritable)."""


class OutputLockedError(OutputError):
    """Another live run holds the output's lock."""


class OutputMismatchError(OutputError):
    """--resume of an output that another job (other input, options or model) wrote."""


class SameFileError(OutputError):
    """The output path names the input file."""


class SideFileError(OutputError):
    """A --metrics or plan path that cannot be written."""


class CheckpointFileError(OutputError):
    """A checkpoint of in-flight sequences that cannot be read or does not fit this job."""


class WriterError(OutputError):
    """The output cannot be opened or resumed as asked."""


class OutputExistsError(WriterError):
    """The output file exists and is not empty, and neither resume nor overwrite was asked."""


class ConflictingOptionsError(WriterError):
    """Writer options that contradict each other (resume with overwrite, resume onto stdout)."""


class OutputUnwritableError(WriterError):
    """The output path cannot be opened for writing (a directory, no permission, no such folder)."""


class OutputWriteError(WriterError):
    """Writing a record failed (disk full, stdout closed); the records before it are in the output."""


class ReaderGoneError(OutputWriteError):
    """Stdout is a pipe whose reader has gone (`| head -3`): it wants no more, as for any Unix tool."""


class CorruptOutputError(WriterError):
    """Resume found a complete line in the output that is not a record this tool writes."""


@dataclass(frozen=True, slots=True)
class ErrorRow:
    kind: type[BaseException]
    prefix: str  # printed before the message: "error: output 'x' exists ..."
    exit_code: int
    message: str | None = None  # replaces the exception's own text (an interrupt has none)
    silent: bool = False  # exit with the code and say nothing


# First match wins, so a subclass comes before its base.
TABLE: tuple[ErrorRow, ...] = (
    ErrorRow(UsageError, "error", EXIT_USAGE),
    ErrorRow(EngineConfigError, "error", EXIT_USAGE),
    ErrorRow(ReaderGoneError, "error", EXIT_SIGPIPE, silent=True),
    ErrorRow(ConflictingOptionsError, "error", EXIT_USAGE),
    ErrorRow(BatchError, "error", EXIT_FATAL),
    # before the engine's own handler (which finishes the batch and says how to resume) is installed
    ErrorRow(KeyboardInterrupt, "batchllm", EXIT_SIGINT,
             "interrupted before any request ran; rerun the same command (add --resume if the output file "
             "was created: error lines may already be in it)"),
)


def row_for(exc: BaseException) -> ErrorRow | None:
    """The table's row for `exc`, or None for an error no user causes (a bug: let it show its traceback)."""
    return next((row for row in TABLE if isinstance(exc, row.kind)), None)
