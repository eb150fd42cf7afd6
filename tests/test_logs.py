"""What a cron log and a pipeline show: whole lines, timestamps, rates and ETA, error codes, metrics."""

from __future__ import annotations

import os
import re
import signal

import orjson
from rich.console import Console

from batchcli import job as job_module
from batchcli.cli import app
from batchcli.progress import Progress, ProgressView, eta
from test_cli import ROWS, lines, model, runner, write_input  # noqa: F401 - model is a fixture


def test_plain_progress_lines_carry_time_rate_and_eta(capsys):
    with ProgressView(Console(stderr=True, force_terminal=False), quiet=False) as view:
        view.update(Progress(10, 40, 100, 200, 3, 10, 20.0), force=True)
    line = capsys.readouterr().err.strip()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d batchllm: 10/40 requests  0\.50 req/s ", line), line
    assert line.endswith("20s elapsed, ETA 1m00s")
    assert eta(Progress(0, 5, 0, 0, 0, 1, 3.0)) == "unknown" and eta(Progress(1, 3601, 0, 0, 0, 1, 1.0)) == "1h00m"


def test_log_lines_are_whole_and_errors_are_broken_down_by_code(tmp_path, model):
    rows = [ROWS[0], b"{bad\n", {"id": "t", "prompt": "x", "temperature": -1}, {"id": "u", "prompt": "x", "top_k": -2}]
    src = write_input(tmp_path / "in.jsonl", rows)
    res = runner.invoke(app, ["run", src, "-o", str(tmp_path / "out.jsonl"), "--model", model])
    assert res.exit_code == 3, res.stderr
    (pool,) = [line for line in res.stderr.splitlines() if "batchllm: KV pool " in line]
    assert len(pool) > 80 and pool.endswith("tokens per step, attention torch"), res.stderr  # one line, not wrapped at 80
    assert "batchllm: 3 error lines: 2 invalid_value, 1 invalid_json; first: " in res.stderr


def test_a_resume_with_nothing_left_still_writes_metrics(tmp_path, model):
    src, out, metrics = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl", tmp_path / "m.json"
    assert runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet"]).exit_code == 0
    metrics.write_text("stale")
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet", "--resume", "--metrics", str(metrics)])
    assert res.exit_code == 0, res.stderr
    doc = orjson.loads(metrics.read_bytes())
    assert doc["requests"] == 0 and doc["skipped"] == 4 and doc["results"] == 0


def test_a_sigterm_after_the_last_result_exits_0(tmp_path, model, monkeypatch):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    real, seen = job_module.render_result, []

    def render_then_signal(result, **kwargs):
        seen.append(result.request.id)
        if len(seen) == len(ROWS):  # the last result: the work is done when the signal lands
            os.kill(os.getpid(), signal.SIGTERM)
        return real(result, **kwargs)

    monkeypatch.setattr(job_module, "render_result", render_then_signal)
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet"])
    assert res.exit_code == 0, res.stderr
    assert len(lines(out.read_text())) == len(ROWS)
