"""What a new user meets in the first hour (issue 22): no tracebacks, help that tells the truth, numbers
that agree, messages that name the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from batchcli.cli import app
from test_cli import ROWS, lines, model, runner, write_input  # noqa: F401 - model is a fixture
from test_io_failures import one_line


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchcli.cli", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_a_closed_stdin_is_one_line_not_a_traceback(tmp_path, model):
    for args in (["run", "-", "-o", str(tmp_path / "out.jsonl")], ["plan", "-", "--dry-run"]):
        res = cli(*args, "--model", model, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
        assert res.returncode == 1, (args, res.stderr)
        assert "Traceback" not in res.stderr and "stdin is closed" in res.stderr, res.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_config_without_the_network_sizes_is_one_line(tmp_path, model):
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    src = write_input(tmp_path / "in.jsonl", ROWS)
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", str(bad)])
    one_line(res, 1, "config.json lacks", "num_attention_heads", "hidden_size")
