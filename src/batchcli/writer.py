"""Output writer: one JSON line per record, appended and flushed line by line, to a file or stdout.

Invariant: a record's line reaches the output whole, or (if the process dies mid-write) as an
unterminated tail that the next `resume=True` open cuts off; so a killed run loses at most the records
in flight. An existing non-empty output is never overwritten unless `overwrite=True`.

Order: "completion" writes each record as it comes; "input" holds a record back until every key
declared before it with `expect()` has been written, and at `close()` writes whatever it still holds
(in declared order), so a run stopped early keeps its finished records.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import orjson

from batchcli.errors import EXIT_USAGE, OutputError

Order = Literal["completion", "input"]


class WriterError(OutputError):
    """The output cannot be opened or resumed as asked."""


class OutputExistsError(WriterError):
    """The output file exists and is not empty, and neither resume nor overwrite was asked."""


class ConflictingOptionsError(WriterError):
    """Writer options that contradict each other (resume with overwrite, resume onto stdout)."""

    exit_code = EXIT_USAGE


class OutputUnwritableError(WriterError):
    """The output path cannot be opened for writing (a directory, no permission, no such folder)."""


class CorruptOutputError(WriterError):
    """Resume found a complete line in the output that is not a record this tool writes."""


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """Records written by this writer (not counting those of an earlier run that was resumed)."""

    successes: int
    errors: int


class OutputWriter:
    """Writes records (dicts rendered by `formats`) as JSON lines; use as a context manager."""

    def __init__(
        self, target: str | Path, *, order: Order = "completion", resume: bool = False, overwrite: bool = False
    ) -> None:
        if order not in ("completion", "input"):
            raise ConflictingOptionsError(f"order must be 'completion' or 'input', got {order!r}")
        if resume and overwrite:
            raise ConflictingOptionsError("resume and overwrite exclude each other; choose one")
        self._order = order
        self._done: frozenset[str] = frozenset()
        self._queue: deque[int] = deque()  # declared keys in emit order, not yet emitted
        self._waiting: set[int] = set()  # declared keys not yet written
        self._held: dict[int, tuple[bytes, bool]] = {}  # written keys waiting for earlier ones
        self._successes = 0
        self._errors = 0
        self._closed = False
        if str(target) == "-":
            if resume:
                raise ConflictingOptionsError("resume needs an output file, not stdout")
            self._file: IO[bytes] = sys.stdout.buffer
            self._owned = False
        else:
            self._file = self._open(Path(target), resume=resume, overwrite=overwrite)
            self._owned = True

    def _open(self, path: Path, *, resume: bool, overwrite: bool) -> IO[bytes]:
        try:
            size = path.stat().st_size if path.is_file() else 0
            if size and resume:
                self._done, end = _scan_answered(path)
                if end < size:
                    with open(path, "r+b") as torn:
                        torn.truncate(end)
            elif size and not overwrite:
                raise OutputExistsError(f"output {str(path)!r} exists and is not empty; resume it or overwrite it")
            return open(path, "wb" if overwrite else "ab")
        except OSError as exc:
            raise OutputUnwritableError(f"cannot write output {str(path)!r}: {exc.strerror}") from None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def done_ids(self) -> frozenset[str]:
        """Ids (custom_id for OpenAI lines) answered in the output before this writer opened it."""
        return self._done

    def expect(self, keys: Iterable[int]) -> None:
        """Declare, in output order, keys that will be written ("input" order only; may be called again)."""
        if self._order != "input":
            raise ValueError("expect() is for order='input'")
        for key in keys:
            if key in self._waiting or key in self._held:
                raise ValueError(f"key {key} declared twice")
            self._waiting.add(key)
            self._queue.append(key)

    def write(self, record: dict, *, key: int | None = None) -> None:
        """Write one record; in "input" order `key` is required and must have been declared.

        A record with a non-null "error" counts as an error line, any other as a success.
        """
        if self._closed:
            raise ValueError("write() on a closed OutputWriter")
        data = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        failed = record.get("error") is not None
        if self._order == "completion":
            self._emit(data, failed)
            self._file.flush()
            return
        if key not in self._waiting:
            raise ValueError(f"key {key!r} was not declared with expect() or was already written")
        self._waiting.remove(key)
        self._held[key] = (data, failed)
        while self._queue and self._queue[0] in self._held:
            self._emit(*self._held.pop(self._queue.popleft()))
        self._file.flush()

    @property
    def counts(self) -> WriteCounts:
        return WriteCounts(self._successes, self._errors)

    def close(self) -> None:
        """Write what is still held (skipping keys never written), flush, and close a file we opened."""
        if self._closed:
            return
        self._closed = True
        for key in self._queue:
            if key in self._held:
                self._emit(*self._held.pop(key))
        self._queue.clear()
        self._file.flush()
        if self._owned:
            self._file.close()

    def _emit(self, data: bytes, failed: bool) -> None:
        self._file.write(data)
        if failed:
            self._errors += 1
        else:
            self._successes += 1


def _scan_answered(path: Path) -> tuple[frozenset[str], int]:
    """Ids answered in an earlier run's output, and the byte length of its complete lines."""
    done: set[str] = set()
    end = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # the torn last line of a killed run: its request is redone
            end += len(raw)
            if raw.isspace():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise CorruptOutputError(f"{path}:{number}: not a JSON line ({exc}); will not resume into it") from None
            done.add(_answered_id(record, path, number))
    return frozenset(done), end


def _answered_id(record: object, path: Path, number: int) -> str:
    if type(record) is dict:
        rid = record.get("custom_id", record.get("id"))
        if rid is None and type(record.get("line")) is int:
            rid = f"line-{record['line']}"  # an OpenAI error line with custom_id null: its line's fallback id
        if type(rid) is str:
            return rid
    raise CorruptOutputError(f"{path}:{number}: not an output record of this tool (no string id); will not resume into it")
