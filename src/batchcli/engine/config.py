"""Engine settings chosen by the user; values known only at run time (KV blocks, eos ids) live in the engine.

Each choice's values are its `batchcli.choices` type and its default is the field's default here (the
CLI's help reads both), except attention, whose names come from the backend registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchcli.choices import Compile, Device, DType, Schedule, check
from batchcli.engine.attention import ATTENTION
from batchcli.engine.kv_pool import parse_kv_budget
from batchcli.errors import UsageError

# tokens computed per step, also the scheduler's default (4096 measured fastest on the 2-core CPU vs 512-2048)
TOKEN_BUDGET = 4096


@dataclass(frozen=True, slots=True)
class EngineConfig:
    device: Device = "auto"
    dtype: DType = "auto"
    attention: str = "auto"
    kv_budget: str = "auto"  # "2GiB", "500MB", "50000tok" or "auto"
    token_budget: int = TOKEN_BUDGET  # tokens computed per step (decodes + prefill chunks)
    schedule: Schedule = "plan"
    max_running: int | None = None  # None: admit while the KV fits; else at most this many running requests
    compile: Compile = "auto"  # fused C++ ops: auto (when the job is big enough to gain) | on | off
    checkpoint_every: float = 30.0  # seconds between checkpoints of in-flight sequences; 0: none

    def __post_init__(self) -> None:
        for name, value, choice in (("--device", self.device, Device), ("--dtype", self.dtype, DType),
                                    ("--schedule", self.schedule, Schedule), ("--compile", self.compile, Compile)):
            check(name, value, choice)
        if self.attention not in ATTENTION:
            raise UsageError(f"--attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.kv_budget.strip().lower() != "auto":
            try:  # the syntax, before any input is read; the size needs the model
                parse_kv_budget(self.kv_budget, 1, 1, 0)
            except ValueError as e:
                raise UsageError(str(e)) from None
        if not (math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0):
            raise UsageError(f"--checkpoint-every must be a number of seconds >= 0, got {self.checkpoint_every}")
        if self.token_budget < 1:
            raise UsageError(f"--token-budget must be >= 1, got {self.token_budget}")
        if self.max_running is not None and self.max_running < 1:
            raise UsageError(f"--admission must be 'memory' or a positive request cap, got {self.max_running}")
