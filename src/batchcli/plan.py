"""The execution plan: shared segments, execution order and statistics; a versioned JSON file.

Invariants: segment ids are indices into `Plan.segments` and parents come before children; the
member requests of a segment are contiguous in `order` (positions first .. first + count - 1);
`leaf[p]` is the deepest segment of the request at order position p, or -1.
"""

from __future__ import annotations

from dataclasses import dataclass

PLAN_VERSION = 1


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of prompt tokens shared by several sequences, prefilled once."""

    id: int
    parent: int  # enclosing segment id, -1 at the top level
    start: int  # token offset of the segment inside every member's prompt
    length: int  # tokens, a positive multiple of the block size
    first: int  # order position of the first member request
    count: int  # member requests (order positions first .. first + count - 1)
    sequences: int  # member sequences (sum of n over member requests)


@dataclass(frozen=True, slots=True)
class PlanSettings:
    block_size: int = 16
    sharing: str = "multi"  # multi | single | off

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 1, got {self.block_size}")
        if self.sharing not in ("multi", "single", "off"):
            raise ValueError(f"sharing must be multi, single or off, got {self.sharing!r}")


@dataclass(frozen=True, slots=True)
class PlanStats:
    requests: int  # valid requests planned
    sequences: int  # requests x n
    errors: int  # input lines that got error records
    logical_prefill_tokens: int  # sum over sequences of prompt length
    physical_prefill_tokens: int  # tokens actually prefilled (each shared segment once)
    saving_ratio: float  # 1 - physical / logical
    groups: int  # distinct deepest segments + unshared requests
    mean_sharing_degree: float  # mean sequences per segment (0 when there are none)
    max_depth: int  # deepest segment nesting (0 when nothing is shared)
    est_kv_peak_tokens: int


@dataclass(frozen=True, slots=True)
class Plan:
    version: int
    model: str
    fingerprint: str  # input file + tokenizer (+ settings); run --plan refuses a mismatch
    settings: PlanSettings
    segments: tuple[Segment, ...]
    order: tuple[int, ...]  # request indices (into the valid, tokenized requests) in execution order
    leaf: tuple[int, ...]  # per order position: deepest segment id, -1 if none
    stats: PlanStats
