"""Build batchllm's fused CPU ops (ops.cpp) once per machine and load them with ctypes.

The library is compiled with the system C++ compiler for this CPU (-march=native) into
`CACHE/native/<key>/libbatchllm_ops.so`, where the key hashes the source, the compiler's version
and the CPU's flags, so a changed source, compiler or machine gets its own build and a cache
shared between machines never loads code built for another CPU. The build goes to a temporary file
renamed into place, so a killed build leaves nothing half-written. No torch headers are included:
the build takes about a second, not the minute a torch C++ extension takes.

Invariant: `load_native` either returns a loaded library or raises `NativeUnavailable` with a
one-line reason (no compiler, no AVX-512, a failed build); callers fall back to the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("ops.cpp")
LIBRARY = "libbatchllm_ops.so"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-Wall", "-Wno-maybe-uninitialized")
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


class NativeUnavailable(RuntimeError):
    """The fused ops cannot be built or loaded on this machine; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class NativeLib:
    lib: ctypes.CDLL
    path: Path
    build_s: float  # seconds spent compiling in this process; 0.0 when the cached build was loaded


def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise NativeUnavailable("no C++ compiler found (install g++ or set CXX)")
    return cxx


def build_key(cxx: str, flags: frozenset[str]) -> str:
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"cannot run the C++ compiler {cxx}: {exc}") from None
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(FLAGS).encode())
    h.update(version.encode())
    h.update(" ".join(sorted(flags)).encode())
    return h.hexdigest()[:16]


def _target(cache: Path) -> tuple[str, Path]:
    flags = cpu_flags()
    missing = [f for f in REQUIRED_CPU_FLAGS if f not in flags]
    if missing:
        raise NativeUnavailable(f"the fused CPU ops need AVX-512 ({', '.join(missing)} missing on this CPU)")
    cxx = _compiler()
    return cxx, cache / "native" / build_key(cxx, flags) / LIBRARY


def cached_native(cache: Path) -> NativeLib | None:
    """The library if this machine already built it, else None; never compiles."""
    try:
        _, target = _target(cache)
        return NativeLib(ctypes.CDLL(str(target)), target, 0.0) if target.is_file() else None
    except (NativeUnavailable, OSError):
        return None


def load_native(cache: Path) -> NativeLib:
    """The fused-ops library for this machine, built into `cache/native` on first use."""
    cxx, target = _target(cache)
    build_s = 0.0
    if not target.is_file():
        build_s = _build(cxx, target)
    try:
        return NativeLib(ctypes.CDLL(str(target)), target, build_s)
    except OSError as exc:
        raise NativeUnavailable(f"cannot load {target}: {exc}") from None


def _build(cxx: str, target: Path) -> float:
    started = time.perf_counter()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
        os.close(fd)
    except OSError as exc:
        raise NativeUnavailable(f"cannot write the fused ops under {target.parent}: {exc}") from None
    try:
        done = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
            raise NativeUnavailable(f"building the fused CPU ops failed ({cxx} exited {done.returncode})"
                                    + (f": {first}" if first else ""))
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"building the fused CPU ops failed: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - started
