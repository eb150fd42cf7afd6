import os
import signal
import subprocess
import sys
import time

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
