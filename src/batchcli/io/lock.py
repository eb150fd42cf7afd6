"""An exclusive lock on an output file, held while a run writes it: a lock file beside it, under flock.

Invariant: at most one live process holds the lock of a path at a time. The kernel drops a flock when
its holder dies, so a lock left by a killed run never blocks the next one; the lock file only carries
the holder's pid, for the refusal message. The lock file is removed on release; a process that locked
a file someone else unlinked meanwhile notices (the path names another inode) and locks again.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from batchcli.errors import OutputError, OutputLockedError



def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


class OutputLock:
    """`with OutputLock(path):` holds `path`'s lock for the block; raises OutputLockedError if taken."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create lock file {str(self.path)!r}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "another process"
                raise OutputLockedError(f"output {str(self.output)!r} is being written by another batchllm run "
                                        f"({who}); wait for it to finish or choose another -o") from None
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
            else:  # the previous holder removed the file between our open and flock: lock the new one
                os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass  # removed by hand; nothing else can hold it, since we still hold the flock
        os.close(self._fd)
        self._fd = None


def holder(output: str | Path) -> int | None:
    """The pid of the live run holding `output`'s lock (0 if it has not written it yet), else None.

    Only looks: a lock taken here, even for an instant, could make a run starting then refuse the
    output, so the kernel's table of locks (/proc/locks) is read instead; without /proc, a live pid
    in the lock file counts as holding it."""
    path = lock_path(Path(output))
    try:
        st = path.stat()
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no run holds the output
    pid = _read_pid(fd)
    os.close(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as table:
            held = any(fields[1:2] == ["FLOCK"] and fields[5:6] == [key] for fields in map(str.split, table))
    except OSError:
        held = pid is not None and pid_alive(pid)
    return (pid or 0) if held else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
