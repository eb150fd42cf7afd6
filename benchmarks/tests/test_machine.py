import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import benchmarks.machine as m

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"


def test_tree_cpu_counts_a_live_grandchild():
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}])"],
                              start_new_session=True)
    try:
        window = m.CpuWindow()
        deadline = time.time() + 20
        while m.tree_cpu_seconds(parent.pid) < 0.55 and time.time() < deadline:
            time.sleep(0.1)
        assert m.tree_cpu_seconds(parent.pid) >= 0.55, "the burning grandchild's CPU was not seen"
        assert 0.0 <= window.others_share(m.tree_cpu_seconds(parent.pid)) <= 1.0
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_busy_time_grows_while_we_compute():
    before = m.busy_cpu_seconds()
    t = time.process_time()
    while time.process_time() - t < 0.1:
        pass
    assert m.busy_cpu_seconds() > before


def test_matmul_peak_is_positive_and_restores_threads():
    threads = torch.get_num_threads()
    assert m.matmul_peak_gflops(torch.float32, seconds=0.05, n=128) > 0
    assert torch.get_num_threads() == threads


def test_machine_info_has_one_peak_per_dtype(monkeypatch):
    monkeypatch.setattr(m, "matmul_peak_gflops", lambda dtype: 1.0)
    info = m.machine_info(("float32", "bfloat16"))
    assert info.peak_gflops == {"float32": 1.0, "bfloat16": 1.0} and info.cores >= 1 and info.mem_gib > 0
    assert set(info.cpu_flags) == set(m.FAMILY_FLAGS) and info.cpu_family == m.cpu_family(m.cpu_flags())


# Flag lines as /proc/cpuinfo writes them (trimmed): Xeon Sapphire Rapids, EPYC Zen 4, Xeon Skylake-SP, EPYC Zen 2
SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
SKYLAKE_SP = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"
ZEN2 = "fpu sse2 avx avx2 fma"


@pytest.mark.parametrize("flags, family", [
    (SAPPHIRE_RAPIDS, "x86 with AMX-BF16"),
    (ZEN4, "x86 with AVX512-BF16 (no AMX)"),
    (SKYLAKE_SP, "x86 with AVX-512 (no BF16, no AMX)"),
    (ZEN2, "x86 AVX2 only"),
    ("amx_tile avx512_bf16 avx512f avx2", "x86 with AVX512-BF16 (no AMX)"),  # tiles without bf16 products
])
def test_cpu_family_is_named_by_its_best_unit(flags, family):
    assert m.cpu_family(set(flags.split())) == family


def test_cpu_without_x86_features_is_named_by_its_architecture():
    assert m.cpu_family({"fp", "asimd", "sve", "bf16"}, arch="aarch64") == "aarch64"


def test_cpu_flags_come_from_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {SAPPHIRE_RAPIDS}\n\n"
                       f"processor\t: 1\nflags\t\t: {ZEN2}\n")
    assert m.cpu_flags(str(cpuinfo)) == frozenset(SAPPHIRE_RAPIDS.split())
    cpuinfo.write_text("processor\t: 0\n")
    assert m.cpu_flags(str(cpuinfo)) == frozenset()


def test_flag_summary_says_which_flags_are_missing():
    assert (m.flag_summary("x86 with AVX512-BF16 (no AMX)", {"amx_tile": False, "avx512_bf16": True})
            == "x86 with AVX512-BF16 (no AMX): amx_tile no, avx512_bf16 yes")
