"""Whether a run uses the fused CPU ops (batchcli.engine.native), decided once per run.

`--compile off` never builds them; `on` builds them if it can; `auto` uses them when they are
already built on this machine, or when the job is big enough that a build (about a second) pays
for itself, so a one-line job never waits for a compiler. `--attention native` asks for them
outright. Invariant: where they cannot be had (no compiler, no AVX-512, an unsupported model), the
run goes on with the eager torch path after one line saying why, unless native attention was
explicitly asked for, which is then an EngineConfigError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from batchcli.engine.attention import BACKENDS
from batchcli.engine.native.build import NativeUnavailable, cached_native, load_native
from batchcli.engine.native.ops import NativeOps, supports
from batchcli.errors import EngineConfigError
from batchcli.model_config import ArchConfig

# Tokens a job must compute (prefill after sharing + expected output) before `auto` builds the ops:
# eager runs such a job in several seconds here, and the fused path saves a third or more of it.
AUTO_MIN_TOKENS = 2048


def wants_fused(compile_mode: str, attention: str, device: torch.device, can_build: bool) -> bool:
    """Whether this configuration may use the fused ops at all; `can_build`: the engine has a place to
    build and keep them."""
    if attention == "native":
        if compile_mode == "off":
            raise EngineConfigError("attention", "native needs the fused CPU ops, and compile is off")
        if device.type not in BACKENDS["native"].devices:
            raise EngineConfigError("attention", f"native runs on CPU, not {device.type}")
        if not can_build:
            raise EngineConfigError("attention", "native needs the fused CPU ops, and the engine was given no cache for them")
        return True
    return attention == "auto" and device.type == "cpu" and compile_mode != "off" and can_build


def choose_fused(compile_mode: str, attention: str, arch: ArchConfig, dtype: torch.dtype, block_size: int,
                 work_tokens: int, cache: Path, log: Callable[[str], None]) -> NativeOps | None:
    """The fused ops for this run, or None for the eager path (see the module docstring)."""
    explicit = attention == "native" or compile_mode == "on"
    why_not = supports(dtype, arch.hidden_size, arch.intermediate_size, arch.head_dim, block_size)
    if why_not is not None:
        return _refuse(f"the fused CPU ops do not support {why_not}", attention, explicit, log)
    if compile_mode == "auto" and attention != "native" and work_tokens < AUTO_MIN_TOKENS:
        native = cached_native(cache)
        if native is None:
            return None
    else:
        try:
            native = load_native(cache)
        except NativeUnavailable as exc:
            return _refuse(str(exc), attention, True, log)
    if native.build_s:
        log(f"batchllm: built the fused CPU ops in {native.build_s:.1f}s (once per machine, kept in {native.path.parent})")
    return NativeOps(native, dtype)


def _refuse(reason: str, attention: str, say: bool, log: Callable[[str], None]) -> None:
    if attention == "native":
        raise EngineConfigError("attention", f"native: {reason}")
    if say:
        log(f"batchllm: {reason}; running the eager torch path")
    return None
