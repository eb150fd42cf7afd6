"""dtype "auto" follows the CPU's flags (never a timing), and --metrics records what was used."""

from __future__ import annotations

import orjson
import pytest
import torch

from batchcli.cli import app
from batchcli.engine.devices import pick_dtype
from test_cli import ROWS, model, runner, write_input  # noqa: F401 - model is a fixture

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, dtype", [("fpu sse avx2 avx512f avx512_bf16", torch.bfloat16),
                                          ("fpu avx2 amx_tile amx_bf16", torch.bfloat16),
                                          ("fpu sse avx2 avx512f", torch.float32), ("", torch.float32)])
def test_auto_dtype_follows_the_cpu_flags(tmp_path, flags, dtype):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert [pick_dtype("auto", CPU, info) for _ in range(3)] == [dtype] * 3
    assert pick_dtype("float32", CPU, info) is torch.float32


def test_auto_dtype_without_cpuinfo_and_on_gpu(tmp_path):
    assert pick_dtype("auto", CPU, tmp_path / "missing") is torch.float32
    assert pick_dtype("auto", torch.device("cuda"), tmp_path / "missing") is torch.bfloat16


def test_metrics_record_the_dtype(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS[:1])
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--quiet", "--metrics", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.stderr
    metrics = orjson.loads((tmp_path / "m.json").read_bytes())
    assert metrics["dtype"] == str(pick_dtype("auto", CPU)).removeprefix("torch.") and metrics["device"] == "cpu"
    # start-up the benchmarks take out of the job's time: both loads, each inside the run's wall time
    assert 0 < metrics["tokenizer_load_s"] and 0 < metrics["model_load_s"]
    assert metrics["tokenizer_load_s"] + metrics["model_load_s"] < metrics["wall_s"]
