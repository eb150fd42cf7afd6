"""A binary stream split into physical lines without ever holding an over-long line whole.

Invariant: memory stays at one read chunk plus at most `max_bytes` of a pending line; a line longer
than `max_bytes` (a CR before its LF not counted) comes out as None, its bytes dropped as they arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

_CHUNK = 1 << 20


def physical_lines(stream: IO[bytes], max_bytes: int) -> Iterator[bytes | None]:
    """Split a binary stream on LF (a CR before it stays); None stands for a line over `max_bytes`.

    Reads fixed-size chunks, so memory stays at one chunk plus at most `max_bytes` of a pending line.
    """
    read = getattr(stream, "read1", stream.read)
    head: list[bytes] = []  # start of the current line, from earlier chunks
    head_len = 0
    skipping = False  # inside an over-long line: drop bytes until its LF
    while chunk := read(_CHUNK):
        parts = chunk.split(b"\n")
        tail = parts.pop()
        for part in parts:
            if skipping:
                skipping = False
                yield None
                continue
            if head:
                head.append(part)
                part = b"".join(head)
                head.clear()
                head_len = 0
            yield part if len(part) <= max_bytes or _fits(part, max_bytes) else None
        if skipping or not tail:
            continue
        head.append(tail)
        head_len += len(tail)
        if head_len > max_bytes + 1:  # + 1: a CR that turns out to end a CRLF line is not content
            skipping = True
            head.clear()
            head_len = 0
    if skipping:
        yield None
    elif head:
        last = b"".join(head)
        yield last if _fits(last, max_bytes) else None


def _fits(line: bytes, max_bytes: int) -> bool:
    return len(line) <= max_bytes or (len(line) == max_bytes + 1 and line.endswith(b"\r"))
