"""Every closed choice a user makes, as one `Literal` type: the config fields are typed with it, the
CLI's help lists its values from it, and `check` validates against it.

Invariant: a choice's values are written here once; each default is written once, as the default of
the config field that holds the choice (PlanSettings, EngineConfig, RunOptions), and the CLI reads it
from there. Attention backends are the exception: their names come from the backend registry.
"""

from __future__ import annotations

from typing import Literal, get_args

from batchcli.errors import UsageError

Sharing = Literal["multi", "single", "off"]  # the whole prefix tree | BatchLLM's one shared level | none
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Schedule = Literal["plan", "input"]  # decode-heavy groups first, as the plan says | input order (ablation)
Compile = Literal["auto", "on", "off"]  # the fused C++ CPU ops
Order = Literal["completion", "input"]  # write each record as it finishes | buffer to input order
InputKind = Literal["jsonl", "text"]  # one JSON object per line | one prompt per line


def values(choice: object) -> tuple[str, ...]:
    """The values of a choice type, in the order written above."""
    return get_args(choice)


def spelled(choice: object) -> str:
    """The values for help and messages: "multi, single or off"."""
    *head, last = values(choice)
    return f"{', '.join(head)} or {last}" if head else last


def check(name: str, value: object, choice: object) -> None:
    """Refuse a value outside `choice`; the message names the option and the bad value."""
    if value not in values(choice):
        raise UsageError(f"{name} must be {spelled(choice)}, got {value!r}")


def parse_admission(spec: str) -> int | None:
    """`--admission`: "memory" (admit while the KV fits: None) or a positive cap on running requests."""
    if spec == "memory":
        return None
    if spec.isdigit() and int(spec) > 0:
        return int(spec)
    raise UsageError(f"--admission must be 'memory' or a positive request cap, got {spec!r}")
