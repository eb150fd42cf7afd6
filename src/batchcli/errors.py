"""Typed errors of the library and the one table that maps them to CLI exit codes.

Invariant: every failure a user can cause is a `BatchError` subclass with a one-line message that
names what was wrong; the CLI prints that line (no traceback) and exits with `exit_code`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class BatchError(Exception):
    """A failure the user can fix; carries its exit code."""

    exit_code = EXIT_FATAL


class UsageError(BatchError):
    """Options that contradict each other or are out of range."""

    exit_code = EXIT_USAGE


class ModelNotFoundError(BatchError):
    """No model at the path, id or default that was asked for."""


class InputError(BatchError):
    """The input as a whole cannot be read (missing file, unreadable stream)."""


class OutputError(BatchError):
    """The output cannot be written (exists without --resume/--overwrite, unwritable)."""


class PlanFileError(BatchError):
    """A plan file that is malformed, of another version, or made for other data."""


class KVBudgetError(BatchError):
    """The KV budget cannot hold even one sequence of the job."""


class WorkerError(BatchError):
    """Engine workers (--workers, --ray-address) cannot start or load the model, or a shard keeps failing."""
