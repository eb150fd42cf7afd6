"""The KV block pool: block ids as plain ints and a free list; plus budget parsing.

Each block has one owner at a time (a sequence's private KV or a shared segment); sharing is counted
by the scheduler, once per segment (`SegmentJob.users`), never per block.
Invariant: every block id in `0 .. num_total - 1` is either free (on the free list once) or used (not
on it). Ids are handed out deterministically: lowest first from a fresh pool, then the most recently
freed run first, in the order it was freed (so a segment's blocks that were contiguous stay
contiguous when reused), and tests can assert exact ids. Every operation checks its whole argument
before changing anything: nothing is ever half done.
"""

from __future__ import annotations

import math
import re
from collections import Counter


class OutOfBlocks(Exception):
    """Fewer free blocks than asked for; the pool is unchanged."""

    def __init__(self, requested: int, free: int) -> None:
        super().__init__(f"asked for {requested} KV blocks, only {free} free")
        self.requested = requested
        self.free = free


class BlockStateError(RuntimeError):
    """A block id used in a state that forbids it (double free, unknown id)."""


class BlockPool:
    """Fixed-size pool of KV block ids."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"a block pool needs at least 1 block, got {num_blocks}")
        self._used = [False] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id first

    @property
    def num_total(self) -> int:
        return len(self._used)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used) - len(self._free)

    def is_used(self, block: int) -> bool:
        self._check_id(block)
        return self._used[block]

    def allocate(self, n: int) -> list[int]:
        """Take `n` free blocks; raise OutOfBlocks (and take none) if too few."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of blocks: {n}")
        if n > len(self._free):
            raise OutOfBlocks(n, len(self._free))
        ids = [self._free.pop() for _ in range(n)]
        for b in ids:
            self._used[b] = True
        return ids

    def free(self, ids: list[int] | tuple[int, ...]) -> None:
        """Return used blocks to the free list."""
        for b, k in Counter(ids).items():
            self._check_id(b)
            if not self._used[b] or k > 1:
                raise BlockStateError(f"double free of KV block {b}")
        for b in ids:
            self._used[b] = False
        self._free.extend(reversed(ids))  # a run freed together comes back in its order: cache reads stay strided

    def check_integrity(self) -> None:
        """Raise BlockStateError unless free + used = total and the free list agrees with the used flags."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise BlockStateError(f"duplicate ids on the free list: {sorted(b for b, k in Counter(self._free).items() if k > 1)}")
        used = [b for b, u in enumerate(self._used) if u]
        if len(free) + len(used) != self.num_total:
            raise BlockStateError(f"free {len(free)} + used {len(used)} != total {self.num_total}")
        for b, u in enumerate(self._used):
            if u == (b in free):
                raise BlockStateError(f"KV block {b} is {'used' if u else 'not used'} but free-list membership {b in free}")

    def _check_id(self, block: int) -> None:
        if not 0 <= block < len(self._used):
            raise BlockStateError(f"KV block id {block} outside 0..{len(self._used) - 1}")


AUTO_SHARE = 0.40  # "auto" budget: this share of the memory reported available when the engine starts
_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def parse_kv_budget(text: str, bytes_per_token: int, block_size: int, available_bytes: int) -> int:
    """Number of KV blocks a budget string buys: "2GiB", "500MB", "50000tok" or "auto".

    Sizes are rounded down to whole blocks; "auto" takes AUTO_SHARE (40%) of `available_bytes`
    (MemAvailable on CPU, free device memory on GPU; the caller measures it). Raises ValueError naming
    the string when it cannot be parsed or buys less than one block.
    """
    if bytes_per_token < 1 or block_size < 1:
        raise ValueError(f"bytes_per_token and block_size must be >= 1, got {bytes_per_token}, {block_size}")
    key = text.strip().lower()
    if key == "auto":
        tokens = int(available_bytes * AUTO_SHARE) // bytes_per_token
    else:
        m = _BUDGET.match(key)
        if m is None or (m.group(2) not in _UNITS and m.group(2) != "tok") or (m.group(2) == "tok" and "." in m.group(1)):
            raise ValueError(f"cannot parse KV budget {text!r}; use e.g. 2GiB, 500MB, 50000tok or auto")
        value, unit = float(m.group(1)), m.group(2)
        tokens = int(value) if unit == "tok" else math.floor(value * _UNITS[unit]) // bytes_per_token
    blocks = tokens // block_size
    if blocks < 1:
        raise ValueError(f"KV budget {text!r} holds {tokens} tokens, less than one block of {block_size}")
    return blocks


def mem_available_bytes(meminfo: str = "/proc/meminfo") -> int:
    """MemAvailable from /proc/meminfo, in bytes (the CPU input to the "auto" budget)."""
    with open(meminfo, encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no MemAvailable line in {meminfo}")
