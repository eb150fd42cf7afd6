"""Engine settings chosen by the user; values known only at run time (KV blocks, eos ids) live in the engine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchcli.engine.attention import ATTENTION
from batchcli.engine.kv_pool import parse_kv_budget

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("plan", "input")
COMPILE = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    kv_budget: str = "auto"  # "2GiB", "500MB", "50000tok" or "auto"
    token_budget: int = 4096  # tokens computed per step (4096 measured fastest on the 2-core CPU vs 512-2048)
    schedule: str = "plan"  # plan | input
    admission: str = "memory"  # memory | a fixed cap of running requests
    seed: int | None = None  # run seed for requests without one
    compile: str = "auto"  # fused C++ ops: auto (when the job is big enough to gain) | on | off
    checkpoint_every: float = 30.0  # seconds between checkpoints of in-flight sequences; 0: none

    def __post_init__(self) -> None:
        for name, value, allowed in (("device", self.device, DEVICES), ("dtype", self.dtype, DTYPES),
                                     ("attention", self.attention, ATTENTION), ("schedule", self.schedule, SCHEDULES),
                                     ("compile", self.compile, COMPILE)):
            if value not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.kv_budget.strip().lower() != "auto":
            parse_kv_budget(self.kv_budget, 1, 1, 0)  # the syntax, before any input is read; the size needs the model
        if not (math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0):
            raise ValueError(f"--checkpoint-every must be a number of seconds >= 0, got {self.checkpoint_every}")
        if self.token_budget < 1:
            raise ValueError(f"--token-budget must be >= 1, got {self.token_budget}")
        if self.admission != "memory" and not (self.admission.isdigit() and int(self.admission) > 0):
            raise ValueError(f"--admission must be 'memory' or a positive request cap, got {self.admission!r}")
