"""Engine settings chosen by the user; values known only at run time (KV blocks, eos ids) live in the engine.

Each choice's values are its `batchcli.choices` type and its default is the field's default here (the
CLI's help reads both), except attention, whose names come from the backend registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchcli.choices import Compile, Device, DType, Schedule, spelled, values
from batchcli.engine.attention import ATTENTION
from batchcli.engine.kv_pool import parse_kv_budget
from batchcli.errors import EngineConfigError

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
        """Raises EngineConfigError naming the field (the CLI turns it into its flag)."""
        for name, choice in (("device", Device), ("dtype", DType), ("schedule", Schedule), ("compile", Compile)):
            if getattr(self, name) not in values(choice):
                raise EngineConfigError(name, f"must be {spelled(choice)}, got {getattr(self, name)!r}")
        if self.attention not in ATTENTION:
            raise EngineConfigError("attention", f"must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.kv_budget.strip().lower() != "auto":
            try:  # the syntax, before any input is read; the size needs the model
                parse_kv_budget(self.kv_budget, 1, 1, 0)
            except ValueError as e:
                raise EngineConfigError("kv_budget", str(e)) from None
        if not (math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0):
            raise EngineConfigError("checkpoint_every", f"must be a number of seconds >= 0, got {self.checkpoint_every}")
        if self.token_budget < 1:
            raise EngineConfigError("token_budget", f"must be >= 1, got {self.token_budget}")
        if self.max_running is not None and self.max_running < 1:
            raise EngineConfigError("max_running", f"must be None (admit by memory) or >= 1, got {self.max_running}")
