"""Scheduler policies, each a small object: request order, admission, and output-length estimates;
and `SchedulerConfig`, which picks them.

Invariant: policies only answer questions over ints; they never touch the pool or a sequence.
- order: `plan_order` (groups together, decode-heavy groups first, as the plan says) or
  `input_order` (ablation: file order; segments are still computed once but live longer);
- admission: `MemoryAdmission` (the KV a sequence will need fits next to what running sequences
  have reserved) or `FixedAdmission(cap)` (ablation: at most `cap` running requests, memory ignored
  except that the sequence's new segments and one more block must be free right now);
- `OutputEstimator`: expected output tokens per group, max_tokens until members of the group finish,
  then their mean observed length (rounded up, capped at max_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from batchcli.choices import Schedule, check
from batchcli.engine.config import TOKEN_BUDGET
from batchcli.planning.plan import Plan


def plan_order(plan: Plan) -> list[int]:
    """Request indices in the plan's execution order."""
    return list(plan.order)


def input_order(plan: Plan) -> list[int]:
    """Request indices in input order."""
    return sorted(plan.order)


ORDERS: dict[Schedule, Callable[[Plan], list[int]]] = {"plan": plan_order, "input": input_order}


@dataclass(frozen=True, slots=True)
class Candidate:
    """The next waiting sequence, as admission sees it."""

    request: int
    request_running: bool  # another sample of the same request is running
    new_blocks: int  # blocks of its segments not allocated yet (allocated on admission)
    private_blocks: int  # private blocks for its prompt tail + expected output


@dataclass(frozen=True, slots=True)
class PoolView:
    free_blocks: int
    reserved_blocks: int  # blocks running sequences still expect to take
    running_requests: int


class Admission(Protocol):
    def admits(self, c: Candidate, pool: PoolView) -> bool: ...


@dataclass(frozen=True, slots=True)
class MemoryAdmission:
    """Admit while the KV a sequence will need fits; no request-count cap."""

    def admits(self, c: Candidate, pool: PoolView) -> bool:
        return c.new_blocks + c.private_blocks <= pool.free_blocks - pool.reserved_blocks


@dataclass(frozen=True, slots=True)
class FixedAdmission:
    """Admit up to `cap` running requests whatever their memory (overflow is left to preemption)."""

    cap: int

    def __post_init__(self) -> None:
        if self.cap < 1:
            raise ValueError(f"admission cap must be >= 1 request, got {self.cap}")

    def admits(self, c: Candidate, pool: PoolView) -> bool:
        below_cap = c.request_running or pool.running_requests < self.cap
        return below_cap and c.new_blocks + 1 <= pool.free_blocks


def make_admission(max_running: int | None) -> Admission:
    """Memory admission for None, else at most `max_running` running requests."""
    return MemoryAdmission() if max_running is None else FixedAdmission(max_running)


class OutputEstimator:
    """Expected output length per group, refined from the observed lengths of finished sequences.

    A group is a request's deepest plan segment; requests that share nothing (-1) form one group.
    """

    def __init__(self) -> None:
        self._sum: dict[int, int] = {}
        self._count: dict[int, int] = {}

    def observe(self, group: int, tokens: int) -> None:
        self._sum[group] = self._sum.get(group, 0) + tokens
        self._count[group] = self._count.get(group, 0) + 1

    def expected(self, group: int, max_tokens: int) -> int:
        count = self._count.get(group, 0)
        if count == 0:
            return max_tokens
        return min(max_tokens, -(-self._sum[group] // count))


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    block_size: int = 16
    token_budget: int = TOKEN_BUDGET  # tokens computed per step; also the cap on running sequences
    order: Schedule = "plan"
    max_running: int | None = None  # None: memory admission; else a fixed cap on running requests

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {self.token_budget}")
        check("order", self.order, Schedule)
        make_admission(self.max_running)
