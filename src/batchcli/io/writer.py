"""Output writer: one JSON line per record, appended and flushed line by line, to a file or stdout.

Invariant: a record's line reaches the output whole, or (if the process dies mid-write) as an
unterminated tail that the next `resume=True` open cuts off; so a killed run loses at most the records
in flight. An existing non-empty output is never overwritten unless `overwrite=True`. A write that
fails (a full disk, a closed pipe) raises `OutputWriteError` naming the output and the reason (on
stdout whose reader has gone, `ReaderGoneError`, which the CLI ends quietly as Unix tools do); an
output file this writer created is removed again if it is left because of an error before any record.

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
from typing import IO, Callable

import orjson

from batchcli.choices import Order, spelled, values
from batchcli.errors import (
    ConflictingOptionsError, CorruptOutputError, OutputExistsError, OutputUnwritableError, OutputWriteError,
    ReaderGoneError,
)


@dataclass(frozen=True, slots=True)
class Answered:
    """What an earlier run's output already answers: success records by id, error records by line.

    Error records go by input line because their id may be a fallback or another line's duplicate,
    so it does not say which line they answer; success ids are unique per job (the reader's rule).
    """

    ids: frozenset[str] = frozenset()
    lines: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.ids) + len(self.lines)


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
        if order not in values(Order):
            raise ConflictingOptionsError(f"order must be {spelled(Order)}, got {order!r}")
        if resume and overwrite:
            raise ConflictingOptionsError("resume and overwrite exclude each other; choose one")
        self._order = order
        self._done = Answered()
        self._queue: deque[int] = deque()  # declared keys in emit order, not yet emitted
        self._waiting: set[int] = set()  # declared keys not yet written
        self._held: dict[int, tuple[bytes, str | None]] = {}  # written keys waiting for earlier ones, with error code
        self._successes = 0
        self._errors = 0
        self._codes: dict[str, int] = {}
        self._closed = False
        self._broken = False  # a write failed: nothing more can be written
        self._path: Path | None = None
        self._created = False
        if str(target) == "-":
            if resume:
                raise ConflictingOptionsError("resume needs an output file, not stdout")
            if sys.stdout is None:  # the process was started with stdout closed
                raise OutputUnwritableError("stdout is closed; give an output file with -o FILE")
            self._file: IO[bytes] = sys.stdout.buffer
            self._owned = False
        else:
            self._path = Path(target)
            self._created = not self._path.exists()
            self._file = self._open(self._path, resume=resume, overwrite=overwrite)
            self._owned = True

    def _open(self, path: Path, *, resume: bool, overwrite: bool) -> IO[bytes]:
        try:
            size = path.stat().st_size if path.is_file() else 0
            if size and resume:
                self._done, end = scan_answered(path)
                if end < size:
                    with open(path, "r+b") as torn:
                        torn.truncate(end)
            elif size and not overwrite:
                raise OutputExistsError(f"output {str(path)!r} exists and is not empty; finish its job with --resume "
                                       "or replace it with --overwrite")
            return open(path, "wb" if overwrite else "ab")
        except OSError as exc:
            raise OutputUnwritableError(f"cannot write output {str(path)!r}: {exc.strerror}") from None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        self.close()
        if exc_type is not None and self._created and self._successes + self._errors == 0:
            self._path.unlink(missing_ok=True)  # a run that failed before its first record leaves no file

    def answered(self) -> Answered:
        """Records already in the output when this writer opened it (resume)."""
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
        error = record.get("error")
        code = None if error is None else str(error.get("code")) if isinstance(error, dict) else "error"
        if self._order == "completion":
            self._guarded(lambda: self._emit(data, code))
            return
        if key not in self._waiting:
            raise ValueError(f"key {key!r} was not declared with expect() or was already written")
        self._waiting.remove(key)
        self._held[key] = (data, code)

        def ready() -> None:
            while self._queue and self._queue[0] in self._held:
                self._emit(*self._held.pop(self._queue.popleft()))

        self._guarded(ready)

    def _guarded(self, emit: Callable[[], None]) -> None:
        """Run `emit` and flush; a failing write becomes OutputWriteError and stops all later writes."""
        if self._broken:
            raise OutputWriteError("output write after an earlier write failed")
        try:
            emit()
            self._file.flush()
        except BrokenPipeError:
            self._broken = True
            if self._path is not None:
                raise OutputWriteError(f"cannot write output {str(self._path)!r}: its reader has gone") from None
            raise ReaderGoneError("stdout's reader has gone") from None
        except OSError as exc:
            self._broken = True
            where = "stdout" if self._path is None else repr(str(self._path))
            hint = "" if self._path is None else "; the records before it are kept: finish with --resume once fixed"
            raise OutputWriteError(f"cannot write output {where}: {exc.strerror or exc}{hint}") from None

    @property
    def on_terminal(self) -> bool:
        """Whether records go to a terminal (`-o -` at a shell prompt)."""
        try:
            return self._file.isatty()
        except (OSError, ValueError):  # a closed or detached stream
            return False

    @property
    def counts(self) -> WriteCounts:
        return WriteCounts(self._successes, self._errors)

    @property
    def error_codes(self) -> dict[str, int]:
        """Error lines written by this writer, by error code, most frequent first."""
        return dict(sorted(self._codes.items(), key=lambda item: (-item[1], item[0])))

    def close(self) -> None:
        """Write what is still held (skipping keys never written), flush, and close a file we opened."""
        if self._closed:
            return
        self._closed = True

        def rest() -> None:
            for key in self._queue:
                if key in self._held:
                    self._emit(*self._held.pop(key))

        try:
            if not self._broken:
                self._guarded(rest)
        finally:
            self._queue.clear()
            if self._owned:
                try:
                    self._file.close()
                except OSError:
                    pass  # its write failure was already raised; closing cannot lose more

    def _emit(self, data: bytes, code: str | None) -> None:
        self._file.write(data)
        if code is not None:
            self._errors += 1
            self._codes[code] = self._codes.get(code, 0) + 1
        else:
            self._successes += 1


def scan_answered(path: Path) -> tuple[Answered, int]:
    """What an earlier run's output answers, and the byte length of its complete lines."""
    ids: set[str] = set()
    lines: set[int] = set()
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
            if type(record) is dict and record.get("error") is not None and type(record.get("line")) is int:
                lines.add(record["line"])
            else:
                ids.add(_answered_id(record, path, number))
    return Answered(frozenset(ids), frozenset(lines)), end


def _answered_id(record: object, path: Path, number: int) -> str:
    if type(record) is dict and record.get("error") is None:
        rid = record.get("custom_id", record.get("id"))
        if type(rid) is str:
            return rid
    raise CorruptOutputError(f"{path}:{number}: not an output record of this tool (no string id, or an error "
                             "without its line); will not resume into it")
