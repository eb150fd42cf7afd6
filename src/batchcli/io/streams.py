"""The command's stderr, made harmless: logs are worth less than results.

Invariant: once installed, a write to stderr never raises. The first one that fails (a closed pipe as
in `2>&1 | head -3`, a full device as in `2>/dev/full`) points file descriptor 2 at /dev/null, so that
every later write, ours or a library's, and the interpreter's own flush at exit, succeed and the run
goes on to its true exit code.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


class LenientStderr:
    """Wraps a text stream; write/flush failures are swallowed after silencing the descriptor."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._silence()

    def _silence(self) -> None:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
            self._stream.flush()  # what was buffered now goes to /dev/null
        except (OSError, ValueError):
            pass  # no descriptor to redirect (already closed): writes keep being swallowed here

    def __getattr__(self, name: str) -> object:  # isatty, fileno, encoding... as the real stream has them
        return getattr(self._stream, name)


def install_lenient_stderr() -> None:
    """Make this process's sys.stderr a LenientStderr (the CLI calls this; the library never does)."""
    if sys.stderr is not None and not isinstance(sys.stderr, LenientStderr):
        sys.stderr = LenientStderr(sys.stderr)
