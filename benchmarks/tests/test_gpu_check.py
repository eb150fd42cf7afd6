"""benchmarks.gpu_check's plumbing on the CPU: the dry run end to end, failures kept apart, the bars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check, gpu_report

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_writes_every_part(tmp_path):
    # run as a user would, from the checkout root (benchmarks/__init__ puts the root last on sys.path)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET", "PYTHONSAFEPATH")}
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out), "--work-dir", str(work)],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # a device run brings back at most 8 files of $OUT: the model, inputs and outputs stay in the work dir
    assert sorted(p.name for p in out.iterdir()) == ["cuda_tests.log", "cuda_tests.xml", "gpu_check.json", "gpu_check.md"]
    assert (work / "model" / "config.json").is_file()
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert {name: p["status"] for name, p in parts.items()} == {"tests": "ok", "kernel": "ok", "e2e": "ok"}
    # no CUDA here: every cuda test is collected, and skipped
    assert parts["tests"]["counts"]["tests"] > 10 and parts["tests"]["counts"]["skipped"] == parts["tests"]["counts"]["tests"]
    rows = parts["kernel"]["rows"]
    assert [(r["case"]["phase"], r["case"]["degree"]) for r in rows] == [("decode", 1), ("decode", 2), ("prefill", 1), ("prefill", 2)]
    assert all(r["max_diff"] < 1e-4 and r["flex_diff"] < 1e-4 for r in rows), rows  # fp32: the same attention
    runs = {(r["peer"], r["workload"]): r for r in parts["e2e"]["runs"]}
    assert set(runs) == {("batchllm", "paper-4"), ("batchllm sharing-off", "paper-4"), ("transformers", "paper-4"),
                         ("batchllm", "paper-8")}
    for r in runs.values():
        assert r["error"] is None and r["completion_tokens"] == r["requests"] * 4 and r["tok_s"] > 0 and r["mfu"] > 0, r
    assert runs[("batchllm", "paper-4")]["computed_prompt_tokens"] < runs[("batchllm sharing-off", "paper-4")]["computed_prompt_tokens"]
    page = (out / "gpu_check.md").read_text()
    assert "## Bars" in page and "| batchllm sharing-off | paper-4 |" in page and "| prefill | 32 | 2 | 16 |" in page


def _args(tmp_path: Path, *extra: str):
    return gpu_check.parse_args(["--dry-run", "--out", str(tmp_path), *extra])


def test_a_failing_part_is_recorded_and_the_next_part_still_runs(tmp_path, monkeypatch):
    def broken(args, part, deadline, save):
        part["cases_done"] = 3
        save()
        raise RuntimeError("CUDA error: an illegal memory access")

    def fine(args, part, deadline, save):
        part.update(status="ok", runs=[])

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(gpu_check, "RUNNERS", {"tests": fine, "kernel": broken, "e2e": fine})
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 1
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert parts["kernel"]["status"] == "error" and "illegal memory access" in parts["kernel"]["note"]
    assert parts["kernel"]["cases_done"] == 3 and parts["e2e"]["status"] == "ok"
    assert "| kernel | error |" in (tmp_path / "gpu_check.md").read_text()


def test_a_part_out_of_time_says_what_it_did_not_run(tmp_path):
    part: dict = {}
    gpu_check.part_kernel(_args(tmp_path), part, time.monotonic() - 1, lambda: None)
    assert part["status"] == "timeout" and part["rows"] == [] and part["note"] == "4 cases not run: out of time"


@pytest.mark.parametrize(("argv", "message"), [
    (["--dry-run", "--parts", "tests,bench"], "unknown ['bench']"),
    (["--dry-run", "--budget", "0"], "--budget must be > 0"),
    ([], "no CUDA device here"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    if not argv and gpu_check.torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_every_cuda_test_is_in_the_files_the_check_runs():
    marked = {f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text()}
    assert marked and marked <= set(gpu_check.CUDA_TEST_FILES)


def _report(shared_us: float, off_s: float | None) -> dict:
    case = {"phase": "decode", "prefix": 4096, "degree": 64, "q_len": 1, "history": 32}
    row = {"case": case, "shared_us": shared_us, "private_us": 300.0, "sdpa_us": 600.0, "flex_us": None, "plan_ms": 1.0,
           "max_diff": 0.0, "flex_diff": None, "sdpa_note": "gqa", "flex_note": "unsupported"}
    runs = [{"peer": "batchllm", "workload": "w", "gen_s": 10.0, "error": None}]
    if off_s is not None:
        runs.append({"peer": "batchllm sharing-off", "workload": "w", "gen_s": off_s, "error": None})
    return {"meta": {}, "parts": {"kernel": {"rows": [row]}, "e2e": {"small_workload": "w", "runs": runs}}}


def test_bars_are_met_missed_or_not_measured():
    wide, alone, off, hf, greedy = gpu_report.bars(_report(shared_us=100.0, off_s=40.0))
    assert (wide["value"], wide["met"]) == (6.0, True) and alone["met"] is None  # no 1-sharer row
    assert (off["value"], off["met"]) == (4.0, True) and hf["met"] is None and greedy["met"] is None
    missed = gpu_report.bars(_report(shared_us=200.0, off_s=None))
    assert [b["met"] for b in missed] == [False, None, None, None, None]
    page = gpu_report.markdown(_report(shared_us=200.0, off_s=None))
    assert "| NO |" in page and "not measured" in page
