"""The CLI through typer's CliRunner: exit codes, data on stdout only, chatter on stderr, resume."""

from __future__ import annotations


import orjson
import pytest
from typer.testing import CliRunner

from batchcli.cli import app
from helpers_models import save_tiny_with_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory, smol_dir):
    """A tiny random Llama that uses the default model's tokenizer: fast, but a real tokenizer path."""
    return str(save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-cli"), smol_dir))


def lines(text: str) -> list[dict]:
    return [orjson.loads(x) for x in text.splitlines() if x.strip()]


def write_input(path, rows) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" if isinstance(r, dict) else r for r in rows))
    return str(path)


ROWS = [
    {"id": "a", "prompt": "The shared system prompt. Question one?", "max_tokens": 4},
    {"id": "b", "prompt": "The shared system prompt. Question two?", "max_tokens": 3},
    {"id": "c", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    {"id": "d", "prompt_token_ids": [5, 6, 7, 8], "max_tokens": 2, "n": 2, "temperature": 0.8, "seed": 1},
]


def test_run_to_file_quiet(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS)
    res = runner.invoke(app, ["run", src, "-o", str(tmp_path / "out.jsonl"), "--model", model, "--quiet", "--dtype", "float32"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    out = lines((tmp_path / "out.jsonl").read_text())
    assert sorted(r["id"] for r in out) == ["a", "b", "c", "d"]
    by_id = {r["id"]: r for r in out}
    assert by_id["a"]["usage"]["completion_tokens"] <= 4 and len(by_id["d"]["choices"]) == 2
    assert by_id["d"]["usage"]["prompt_tokens"] == 4


def test_stdin_to_stdout_holds_only_data(tmp_path, model):
    data = b"".join(orjson.dumps(r) + b"\n" for r in ROWS)
    res = runner.invoke(app, ["run", "-", "-o", "-", "--model", model, "--order", "input"], input=data)
    assert res.exit_code == 0, res.stderr
    assert [r["id"] for r in lines(res.stdout)] == ["a", "b", "c", "d"]  # input order
    assert "requests" in res.stderr  # the chatter went to stderr


def test_bad_lines_give_error_records_and_exit_3(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", [ROWS[0], b"{not json\n", {"id": "t", "prompt": "x", "temperature": -1}, ROWS[1]])
    res = runner.invoke(app, ["run", src, "-o", str(tmp_path / "out.jsonl"), "--model", model, "--quiet"])
    assert res.exit_code == 3
    out = {r["id"]: r for r in lines((tmp_path / "out.jsonl").read_text())}
    assert out["line-2"]["error"]["code"] == "invalid_json" and out["line-2"]["line"] == 2
    assert out["t"]["error"]["code"] == "invalid_value" and out["t"]["line"] == 3
    assert "text" in out["a"] and "text" in out["b"]


def test_existing_output_is_refused_then_resumed(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS)
    out_path = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["run", src, "-o", str(out_path), "--model", model, "--quiet", "--order", "input"])
    assert res.exit_code == 0, res.stderr
    first = out_path.read_bytes().splitlines(keepends=True)
    out_path.write_bytes(first[1] + first[0][:15])  # b finished; a torn by a kill; c, d never written
    res = runner.invoke(app, ["run", src, "-o", str(out_path), "--model", model, "--quiet"])
    assert res.exit_code == 1 and "exists" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(app, ["run", src, "-o", str(out_path), "--model", model, "--quiet", "--resume"])
    assert res.exit_code == 0, res.stderr
    out = lines(out_path.read_text())
    assert sorted(r["id"] for r in out) == ["a", "b", "c", "d"]
    assert out_path.read_bytes().startswith(first[1])  # the finished one was kept, not redone


def test_usage_errors_exit_2(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS)
    for args in (["--sharing", "bogus"], ["--temperature", "-1"], ["--order", "random"], ["--kv-budget", "lots"]):
        res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, *args])
        assert res.exit_code == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_fatal_errors_exit_1(tmp_path, model):
    res = runner.invoke(app, ["run", str(tmp_path / "missing.jsonl"), "-o", "-", "--model", model])
    assert res.exit_code == 1 and "does not exist" in res.stderr
    res = runner.invoke(app, ["run", write_input(tmp_path / "in.jsonl", ROWS), "-o", "-", "--model", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "nope" in res.stderr


def test_plan_dry_run_and_plan_file(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS)
    res = runner.invoke(app, ["plan", src, "--dry-run", "--model", model, "--block-size", "4"])
    assert res.exit_code == 0, res.stderr
    assert "prompt computation saved by sharing" in res.stdout and not (tmp_path / "in.plan.json").exists()
    res = runner.invoke(app, ["plan", src, "-o", "-", "--model", model])
    plan = orjson.loads(res.stdout)
    assert res.exit_code == 0 and plan["version"] == 1
    (tmp_path / "p.json").write_text(res.stdout)
    res = runner.invoke(app, ["run", src, "--plan", str(tmp_path / "p.json"), "-o", "-", "--model", model, "--quiet"])
    assert res.exit_code == 0, res.stderr
    other = write_input(tmp_path / "other.jsonl", ROWS[:2])
    res = runner.invoke(app, ["run", other, "--plan", str(tmp_path / "p.json"), "-o", "-", "--model", model])
    assert res.exit_code == 1 and "made for 4 requests, and this input has 2 to run" in res.stderr


def test_openai_batch_lines_get_openai_output(tmp_path, model):
    row = {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "x", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}}
    res = runner.invoke(app, ["run", "-", "-o", "-", "--model", model, "--quiet", "--served-model-name", "x"],
                        input=orjson.dumps(row) + b"\n")
    assert res.exit_code == 0, res.stderr
    (out,) = lines(res.stdout)
    assert out["custom_id"] == "req-1" and out["error"] is None
    assert out["response"]["status_code"] == 200 and out["response"]["body"]["choices"][0]["message"]["role"] == "assistant"


def test_help_teaches():
    res = runner.invoke(app, ["run", "--help"])
    assert res.exit_code == 0 and "--resume" in res.stdout and "Examples" in res.stdout


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_finishes(tmp_path, model):
    import signal
    import subprocess
    import sys
    import time

    rows = [{"id": f"q{i}", "prompt_token_ids": [7 + i % 5] * (5 + i % 7), "max_tokens": 40, "ignore_eos": True}
            for i in range(40)]
    src = write_input(tmp_path / "in.jsonl", rows)
    out_path = tmp_path / "out.jsonl"
    cli = [sys.executable, "-m", "batchcli.cli"]
    cmd = [*cli, "run", src, "-o", str(out_path), "--model", model, "--admission", "2", "--quiet",
           "--temperature", "0.7", "--seed", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out_path.exists() and out_path.read_text().count("\n") >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    hint = err.split("with: batchllm ")[1].split()  # the command the interrupted run says finishes the job
    assert hint == ["run", src, "-o", str(out_path), "--resume"], err
    first = lines(out_path.read_text())
    assert 1 <= len(first) < 40  # stopped admitting: not everything ran
    res = subprocess.run([*cli, *hint], capture_output=True, text=True, timeout=300)  # the job's options come along
    assert res.returncode == 0, res.stderr
    ids = [r["id"] for r in lines(out_path.read_text())]
    assert sorted(ids) == sorted(r["id"] for r in rows)  # every id exactly once


def test_nothing_to_run_loads_no_model(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", [b"\n", b"[1, 2]\n"])
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model])
    assert res.exit_code == 3 and lines(res.stdout)[0]["error"]["code"] == "not_an_object"
    assert "nothing to run" in res.stderr
    empty = write_input(tmp_path / "empty.jsonl", [])
    res = runner.invoke(app, ["run", empty, "-o", "-", "--model", model])
    assert res.exit_code == 0 and res.stdout == ""


def test_version():
    from batchcli import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"batchllm {__version__}"


def test_sampling_flags_reach_every_line_and_are_checked(tmp_path, model):
    rows = [{"id": "pick", "prompt": "Yes or no?", "choice": ["yes", "no"], "max_tokens": 8},
            {"id": "free", "prompt": "Say something", "max_tokens": 3, "stop_token_ids": [7], "min_tokens": 1}]
    src = write_input(tmp_path / "in.jsonl", rows)
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--quiet", "--logprobs", "2",
                              "--presence-penalty", "0.5", "--repetition-penalty", "1.1", "--order", "input"])
    assert res.exit_code == 0, res.stderr
    pick, free = lines(res.stdout)
    assert pick["text"] in ("yes", "no") and pick["finish_reason"] == "stop"
    assert all(len(e["top_logprobs"]) == 2 for e in pick["logprobs"] + free["logprobs"])
    at_eos = free["finish_reason"] == "stop" and free["stop_reason"] is None  # a final EOS gets no entry
    assert len(free["logprobs"]) == free["usage"]["completion_tokens"] - at_eos
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--min-tokens", "5", "--max-tokens", "3"])
    assert res.exit_code == 2 and "min_tokens" in res.stderr
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--frequency-penalty", "2.5"])
    assert res.exit_code == 2 and "frequency_penalty" in res.stderr


def test_the_seed_flag_repeats_samples_and_another_seed_changes_them(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", [{"id": "s", "prompt": "Tell me a story.", "max_tokens": 8}])

    def text(seed: str) -> str:
        res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--quiet", "--temperature", "1.0",
                                  "--seed", seed])
        assert res.exit_code == 0, res.stderr
        return lines(res.stdout)[0]["text"]

    first = text("1")
    assert text("1") == first and text("2") != first
