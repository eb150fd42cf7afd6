"""No tracebacks when writes or reads fail: one line, the right exit code, no results lost."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import orjson
import pytest
import torch

from batchcli.cli import app
from test_cli import ROWS, lines, model, runner, write_input  # noqa: F401 - model is a fixture

DATA = b"".join(orjson.dumps(r) + b"\n" for r in ROWS)


def one_line(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert all(n in res.stderr for n in needles), res.stderr


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchcli.cli", *args], timeout=300, **kwargs)


def test_unwritable_side_files_are_refused_before_the_work(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet", "--metrics", str(tmp_path / "no" / "m.json")])
    one_line(res, 1, "--metrics", "does not exist")
    assert not out.exists()
    res = runner.invoke(app, ["plan", src, "-o", str(tmp_path), "--model", model])
    one_line(res, 1, "plan file", "is a directory")


def test_a_full_disk_is_one_line(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    res = runner.invoke(app, ["run", src, "-o", "/dev/full", "--model", model, "--quiet", "--overwrite"])
    one_line(res, 1, "/dev/full", "No space left on device")
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet", "--metrics", "/dev/full"])
    one_line(res, 1, "--metrics", "No space left on device")
    assert sorted(r["id"] for r in lines(out.read_text())) == ["a", "b", "c", "d"]  # the results are all there
    res = runner.invoke(app, ["plan", src, "-o", "/dev/full", "--model", model])
    assert res.exit_code == 1 and "No space left on device" in res.stderr and "Traceback" not in res.stderr


def test_failures_before_the_first_line_leave_no_output(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    cases = [(["run", str(tmp_path / "missing.jsonl")], 1, "does not exist"), (["run", str(tmp_path)], 1, "is a directory"),
             (["run", src, "--kv-budget", "lots"], 2, "cannot parse KV budget"),
             (["run", src, "--kv-budget", "10TiB"], 1, "of memory is available"),
             (["run", src, "--plan", str(tmp_path / "no-plan.json")], 1, "plan file")]
    if not torch.cuda.is_available():
        cases.append((["run", src, "--device", "cuda"], 2, "no CUDA device"))
    for args, code, needle in cases:
        res = runner.invoke(app, [*args, "-o", str(out), "--model", model, "--quiet"])
        one_line(res, code, needle)
        assert not out.exists(), args


def test_a_fifo_is_a_valid_input(tmp_path, model):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(DATA))
    feeder.start()
    res = runner.invoke(app, ["run", str(fifo), "-o", "-", "--model", model, "--quiet"])
    feeder.join()
    assert res.exit_code == 0, res.stderr
    assert sorted(r["id"] for r in lines(res.stdout)) == ["a", "b", "c", "d"]


@pytest.mark.slow
def test_failing_stdout_and_stderr_in_a_real_process(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    with open(src, "rb") as stdin:  # /dev/stdin as the input file, stderr on a full device
        res = cli("run", "/dev/stdin", "-o", str(out), "--model", model, stdin=stdin, stderr=open("/dev/full", "w"))
    assert res.returncode == 0
    assert sorted(r["id"] for r in lines(out.read_text())) == ["a", "b", "c", "d"]
    proc = subprocess.Popen([sys.executable, "-m", "batchcli.cli", "run", src, "-o", str(out), "--model", model,
                             "--overwrite"], stderr=subprocess.PIPE)
    proc.stderr.close()  # a reader that went away, as `2>&1 | head -1` does
    assert proc.wait(timeout=300) == 0
    assert sorted(r["id"] for r in lines(out.read_text())) == ["a", "b", "c", "d"]
    res = cli("run", src, "-o", "-", "--model", model, "--quiet", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
              text=True, pass_fds=(), preexec_fn=lambda: os.close(1))
    assert res.returncode == 1 and "stdout is closed" in res.stderr and "Traceback" not in res.stderr
    proc = subprocess.Popen([sys.executable, "-m", "batchcli.cli", "run", src, "-o", "-", "--model", model, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `| head -0`: the reader is gone before the first result
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and err == "", err  # quietly, as a Unix tool killed by SIGPIPE
