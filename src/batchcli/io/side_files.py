"""Files a command writes besides its records (--metrics, a plan): checked before the work, written whole.

Invariant: a path that cannot be written is refused before any input is read, in one line naming it;
a write that still fails (a full disk) is one line too, never a traceback after the work is done.
"""

from __future__ import annotations

import os
from pathlib import Path

from batchcli.errors import SideFileError



def check_writable(path: Path, what: str) -> None:
    """Refuse `path` now if it is a directory or its folder does not exist or cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise SideFileError(f"{what} {str(path)!r} is a directory")
    if not folder.is_dir():
        raise SideFileError(f"{what} {str(path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise SideFileError(f"{what} {str(path)!r} cannot be written (permission denied)")


def write_file(path: Path, data: bytes, what: str) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise SideFileError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}") from None
