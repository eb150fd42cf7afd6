"""The attention backends by name: the one registry the config, the CLI help, engine/fused.py and
the model loader read. Imports no torch: each entry loads its backend module on first use.

Backends (the contract is in `attention.backend`: plan once per step, run per layer):
"native" (the fused CPU forward, built by engine/fused.py with its ops; the model it runs in is loaded
with the eager backend "auto" picks, its fallback), "torch" (batched
torch ops, any device), "triton" (CUDA kernel in batchcli.kernels), "gather" (no shared-prefix
decomposition; the ablation baseline) and "reference" (float32 loops, tests only). "auto" is the
best eager backend for the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, get_args

if TYPE_CHECKING:
    from batchcli.engine.attention.backend import AttentionBackend, AttnShape

AttentionChoice = Literal["auto", "native", "torch", "triton", "gather", "reference"]


@dataclass(frozen=True, slots=True)
class BackendEntry:
    name: str
    summary: str  # its gloss in the CLI help ("" for none)
    devices: frozenset[str] | None  # device types it runs on; None: any
    # the backend for a model's shape; None for a fused entry, which runs inside the fused forward
    make: Callable[[AttnShape], AttentionBackend] | None
    auto_on: frozenset[str] = frozenset()  # device types where "auto" picks it
    interpreter: str | None = None  # an environment variable that, set to 1, lets it run off its devices
    in_help: bool = True  # False: accepted, but not offered in the CLI help (tests only)


def _torch(shape: AttnShape) -> AttentionBackend:
    from batchcli.engine.attention.torch_backend import TorchAttention

    return TorchAttention(shape.dtype)


def _triton(shape: AttnShape) -> AttentionBackend:
    from batchcli.kernels.shared_prefix_attention import TritonAttention

    return TritonAttention(shape)


def _gather(shape: AttnShape) -> AttentionBackend:
    from batchcli.engine.attention.gather_backend import GatherAttention

    return GatherAttention()


def _reference(shape: AttnShape) -> AttentionBackend:
    from batchcli.engine.attention.reference import ReferenceAttention

    return ReferenceAttention()


BACKENDS: dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("native", "fused CPU ops", frozenset({"cpu"}), None),
    BackendEntry("torch", "", None, _torch, auto_on=frozenset({"cpu"})),
    BackendEntry("triton", "CUDA", frozenset({"cuda"}), _triton, auto_on=frozenset({"cuda"}), interpreter="TRITON_INTERPRET"),
    BackendEntry("gather", "no prefix decomposition; ablation", None, _gather),
    BackendEntry("reference", "", None, _reference, in_help=False),
)}
ATTENTION: tuple[str, ...] = ("auto", *BACKENDS)  # every --attention choice
EAGER = tuple(name for name, e in BACKENDS.items() if e.make is not None)  # what load_model can build
assert ATTENTION == get_args(AttentionChoice), "AttentionChoice and the registry must name the same backends"


def attention_help() -> str:
    """The --attention help line, from the registry."""
    names = ["auto"] + [f"{e.name} ({e.summary})" if e.summary else e.name for e in BACKENDS.values() if e.in_help]
    return f"Attention backend: {', '.join(names[:-1])} or {names[-1]}."


def resolve_backend(name: str, device_type: str) -> str:
    """The eager backend a model is loaded with for the choice `name`: "auto" and a fused entry
    ("native") map to the best eager backend for the device; unknown names and wrong devices are refused."""
    if name not in ATTENTION:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION)}")
    if name == "auto" or BACKENDS[name].make is None:
        return next((n for n in EAGER if device_type in BACKENDS[n].auto_on), "torch")
    entry = BACKENDS[name]
    if entry.devices is None or device_type in entry.devices:
        return name
    if entry.interpreter is not None and os.environ.get(entry.interpreter) == "1":
        return name
    where = " or ".join(sorted(d.upper() if d == "cuda" else d for d in entry.devices))
    also = f" (or {entry.interpreter}=1 for tests)" if entry.interpreter else ""
    raise ValueError(f"attention backend {name!r} needs a {where} device{also}")


def make_backend(name: str, shape: AttnShape) -> AttentionBackend:
    """The eager backend `name` (not "auto", not "native") for a model of this shape."""
    make = BACKENDS[name].make if name in BACKENDS else None
    if make is None:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(EAGER)}")
    return make(shape)
