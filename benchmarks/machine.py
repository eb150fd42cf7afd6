"""What the benchmark machine is and how busy it was: CPU facts, matmul peak, CPU accounting, RSS.

The CPU family (named from /proc/cpuinfo flags: AMX, AVX512-BF16, AVX-512, AVX2) labels every figure,
because batchllm's kernels, vLLM's and torch's each pick their code by those flags, so a ratio measured
on one family says little about another.

Invariant: every number here is measured in the running benchmark process (never assumed), and a
`CpuWindow` charges to "others" only the busy CPU time that neither this process nor the measured
process tree spent, so a noisy neighbour shows up as others' share of the machine's CPU capacity.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass, field

import torch

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The flags that decide which matrix/vector code the engines run, as /proc/cpuinfo spells them
FAMILY_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f")
FAMILIES = (  # first match wins: the best unit present names the family
    (("amx_tile", "amx_bf16"), "x86 with AMX-BF16"),
    (("avx512_bf16",), "x86 with AVX512-BF16 (no AMX)"),
    (("avx512f",), "x86 with AVX-512 (no BF16, no AMX)"),
    (("avx2",), "x86 AVX2 only"),
)
MATMUL_N = 1024  # large enough to reach the GEMM peak, small enough for a ~1 s measurement
PEAK_THREADS = 2


@dataclass(frozen=True, slots=True)
class MachineInfo:
    cpu_model: str
    cpu_family: str  # cpu_family() of its flags
    cpu_flags: dict[str, bool]  # each of FAMILY_FLAGS: present or not
    cores: int  # logical CPUs this process may run on
    mem_gib: float
    python: str
    torch: str
    peak_gflops: dict[str, float] = field(default_factory=dict)  # dtype name -> torch.mm GFLOP/s


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's flags (x86 "flags", Arm "Features"); empty when the file lists none."""
    with open(cpuinfo) as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_family(flags: frozenset[str] | set[str], arch: str | None = None) -> str:
    """The family the results are filed under, e.g. "x86 with AMX-BF16". A CPU with none of the
    FAMILIES' features is named by its architecture, `arch` (default: this machine's, e.g. "aarch64")."""
    for needed, family in FAMILIES:
        if all(flag in flags for flag in needed):
            return family
    return arch or platform.machine() or "unknown CPU"


def flag_summary(family: str, flags: dict[str, bool]) -> str:
    """The family and its deciding flags in one phrase: `x86 with AMX-BF16: amx_tile yes, ...`."""
    return f"{family}: " + ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in flags.items())


def mem_gib() -> float:
    with open("/proc/meminfo") as f:
        kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return kib / 2**20


def matmul_peak_gflops(dtype: torch.dtype, seconds: float = 1.0, n: int = MATMUL_N) -> float:
    """Best-of-rounds `torch.mm` throughput of an n x n x n product on PEAK_THREADS threads."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(PEAK_THREADS)
    try:
        a = torch.randn(n, n).to(dtype)  # [n, n]
        b = torch.randn(n, n).to(dtype)  # [n, n]
        torch.mm(a, b)  # warm-up: first call picks the kernel and faults pages in
        best = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        return best
    finally:
        torch.set_num_threads(old_threads)


def machine_info(dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> MachineInfo:
    peaks = {name: round(matmul_peak_gflops(getattr(torch, name)), 1) for name in dtypes}
    flags = cpu_flags()
    return MachineInfo(
        cpu_model=cpu_model(),
        cpu_family=cpu_family(flags),
        cpu_flags={name: name in flags for name in FAMILY_FLAGS},
        cores=len(os.sched_getaffinity(0)),
        mem_gib=round(mem_gib(), 1),
        python=platform.python_version(),
        torch=torch.__version__,
        peak_gflops=peaks,
    )


def busy_cpu_seconds() -> float:
    """Machine-wide non-idle CPU time from /proc/stat (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all threads) plus its reaped children, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; fields start at state
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a live process and all its live descendants (reaped ones count in their parent)."""
    return proc_cpu_seconds(pid) + sum(tree_cpu_seconds(c) for c in child_pids(pid))


def peak_rss_kib(pid: int) -> int:
    """VmHWM, the process's own peak resident set so far; 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except FileNotFoundError:
        return 0


def tree_peak_rss_kib(pid: int) -> int:
    """Sum of the peaks of a live process tree: an upper bound on its memory at any one moment."""
    return peak_rss_kib(pid) + sum(tree_peak_rss_kib(c) for c in child_pids(pid))


@dataclass(slots=True)
class CpuWindow:
    """Brackets one timed run: others' CPU = busy delta - our own delta - the measured tree's delta."""

    busy0: float = field(default_factory=busy_cpu_seconds)
    self0: float = field(default_factory=self_cpu_seconds)
    wall0: float = field(default_factory=time.perf_counter)

    def others_share(self, tree_cpu_s: float) -> float:
        """Fraction of the machine's CPU capacity over the window that other processes used."""
        wall = time.perf_counter() - self.wall0
        busy = busy_cpu_seconds() - self.busy0
        own = self_cpu_seconds() - self.self0
        others = max(0.0, busy - own - tree_cpu_s)
        return others / max(wall * len(os.sched_getaffinity(0)), 1e-9)
