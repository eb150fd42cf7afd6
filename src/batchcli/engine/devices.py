"""Where the engine runs and in which dtype, decided from the machine's facts, never from a timing.

Invariant: the same command on the same machine always picks the same device and dtype, whatever the
load, so a greedy run gives the same answer every time. dtype "auto": bfloat16 on a GPU; on a CPU,
bfloat16 only where the CPU computes it natively (AMX or AVX-512 BF16 flags), else float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from batchcli.choices import Device, DType
from batchcli.errors import EngineConfigError

DTYPES: dict[DType, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def pick_device(name: Device) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError("device", "cuda asked for, but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: DType, device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> torch.dtype:
    """The asked dtype; for "auto", bf16 on GPU and on CPUs with native bf16 (~3.5x faster there with
    AMX), float32 on CPUs that would emulate bf16 (slower than float32)."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if cpu_flags(cpuinfo) & _NATIVE_BF16_FLAGS else torch.float32


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass  # not Linux: no flags known, so the safe choice, float32
    return frozenset()
