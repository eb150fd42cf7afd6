"""What a new user meets in the first hour (issue 22): no tracebacks, help that tells the truth, numbers
that agree, messages that name the fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

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


def help_text(*command: str) -> str:
    """`--help` of a command as one line of words (the panels' borders and wrapping taken out)."""
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0, res.stderr
    return " ".join(res.stdout.replace("│", " ").split())


def test_help_tells_that_body_model_is_checked_and_the_error_names_the_flag(tmp_path, model):
    text = help_text("run")
    ignored = text.split("ignored: ")[1].split(";")[0]
    assert "model" not in ignored and "body.model, when given, must be the served model (--served-model-name" in text
    row = {"custom_id": "r", "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}
    res = runner.invoke(app, ["run", "-", "-o", "-", "--model", model, "--quiet"], input=json.dumps(row) + "\n")
    (line,) = lines(res.stdout)
    assert res.exit_code == 3 and line["error"]["code"] == "model_not_found"
    assert "--served-model-name" in line["error"]["message"]


def test_help_shows_the_ray_extra_whole():
    assert "pip install 'batchllm[ray]'" in help_text("run")


def test_the_summary_rates_share_one_clock_and_say_which(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS[:3])  # n = 1: the usage counts each prompt once, as the rate
    res = runner.invoke(app, ["run", src, "-o", str(tmp_path / "out.jsonl"), "--model", model])
    assert res.exit_code == 0, res.stderr
    summary = next(line for line in res.stderr.splitlines() if "output tok/s" in line)
    match = re.search(r"generation ([\d.]+)s\): ([\d,]+) tok/s \(prompt \+ output\), ([\d,]+) output tok/s over the generation", summary)
    assert match, summary
    records = lines((tmp_path / "out.jsonl").read_text())
    prompt = sum(r["usage"]["prompt_tokens"] for r in records)
    output = sum(r["usage"]["completion_tokens"] for r in records)
    total_rate, output_rate = (int(g.replace(",", "")) for g in match.groups()[1:])
    assert output_rate <= total_rate
    # one clock: rate / tokens is 1 / seconds for both, up to the rounding of each rate to a whole number
    assert abs(total_rate / (prompt + output) - output_rate / output) <= 0.5 / (prompt + output) + 0.5 / output


def test_an_output_on_a_device_or_a_pipe_gets_no_files_beside_it(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    res = runner.invoke(app, ["run", src, "-o", str(fifo), "--model", model, "--quiet"])
    assert res.exit_code == 0, res.stderr
    assert sorted(r["id"] for r in lines(reader.communicate(timeout=60)[0].decode())) == ["a", "b", "c", "d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.fifo"]  # no job record, lock or checkpoint
    res = runner.invoke(app, ["run", src, "-o", str(fifo), "--model", model, "--resume"])
    one_line(res, 2, "--resume needs a regular output file")


def test_a_max_tokens_flag_past_the_context_is_one_usage_error(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Hello there"}]), tmp_path / "out.jsonl"
    for command in (["run", src, "-o", str(out)], ["plan", src, "--dry-run"]):
        res = runner.invoke(app, [*command, "--model", model, "--max-tokens", "100000"])
        one_line(res, 2, "--max-tokens 100000 leaves no room for a prompt", "context of 4096 tokens")
    assert not out.exists()


def test_a_line_whose_max_tokens_fills_the_context_says_so(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Hello there", "max_tokens": 100000}])
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--quiet"])
    (line,) = lines(res.stdout)
    assert res.exit_code == 3 and line["error"]["message"] == (
        "max_tokens 100000 leaves no room for a prompt in the model's context of 4096 tokens")


def test_an_output_in_a_missing_folder_says_the_folder_does_not_exist(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS)
    res = runner.invoke(app, ["run", src, "-o", str(tmp_path / "nodir" / "out.jsonl"), "--model", model])
    one_line(res, 1, "output", "folder", "nodir", "does not exist")
    res = runner.invoke(app, ["run", src, "-o", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "nodir" / "e.jsonl"),
                              "--model", model])
    one_line(res, 1, "--errors", "does not exist")


def test_an_input_that_is_no_regular_file_asks_for_an_output_name(tmp_path, model):
    res = cli("run", "/dev/stdin", "--model", model, input="")
    assert res.returncode == 2 and "give -o FILE" in res.stderr and ".out.jsonl" not in res.stderr, res.stderr


def test_a_tokenizer_that_cannot_load_is_one_whole_line(tmp_path, model):
    import shutil

    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(model, name), bare / name)
    res = runner.invoke(app, ["run", write_input(tmp_path / "in.jsonl", ROWS), "-o", "-", "--model", str(bare)])
    one_line(res, 1, "cannot load the tokenizer", "it has no tokenizer.json")
    assert not res.stderr.rstrip().endswith(":"), res.stderr  # the reason is whole, not cut at its first line


def test_plan_exits_3_when_lines_are_bad_as_run_does(tmp_path, model):
    good, bad = write_input(tmp_path / "good.jsonl", ROWS), write_input(tmp_path / "bad.jsonl", [b"one\n", b"two\n"])
    assert runner.invoke(app, ["plan", good, "--dry-run", "--model", model]).exit_code == 0
    assert runner.invoke(app, ["plan", bad, "--dry-run", "--model", model]).exit_code == 3
    assert runner.invoke(app, ["plan", bad, "--dry-run", "--json", "--model", model]).exit_code == 3
    res = runner.invoke(app, ["plan", bad, "-o", str(tmp_path / "p.json"), "--model", model])
    assert res.exit_code == 3 and (tmp_path / "p.json").exists()


PLAIN_TEXT = b"What is 2+2?\n\nName a colour.\r\n"


def test_plain_text_fed_as_jsonl_is_named_with_the_fix(tmp_path, model):
    src = write_input(tmp_path / "prompts.txt", [PLAIN_TEXT])
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--quiet"])
    assert res.exit_code == 3
    assert all("the input is JSONL" in r["error"]["message"] for r in lines(res.stdout))
    assert "is not JSONL" in res.stderr and "--input-format text" in res.stderr  # said even with --quiet
    res = runner.invoke(app, ["plan", src, "--dry-run", "--model", model])
    assert res.exit_code == 3 and "--input-format text" in res.stderr
    res = runner.invoke(app, ["run", write_input(tmp_path / "in.jsonl", [b"{bad\n", *ROWS[:1]]), "-o", "-",
                              "--model", model, "--quiet"])
    assert "--input-format" not in res.stderr  # one bad line in a JSONL file is just that


def test_text_input_is_one_chat_prompt_per_line_with_a_shared_system_prompt(tmp_path, model, smol_tokenizer):
    src = write_input(tmp_path / "prompts.txt", [PLAIN_TEXT])
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--quiet", "--input-format", "text",
                              "--system", "Answer in one word.", "--max-tokens", "2", "--order", "input"])
    assert res.exit_code == 0, res.stderr
    first, second = lines(res.stdout)
    assert (first["id"], second["id"]) == ("line-1", "line-3")  # named by line number, the blank line skipped
    chat = smol_tokenizer.tok.apply_chat_template(
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}],
        add_generation_prompt=True, tokenize=False)
    assert second["usage"]["prompt_tokens"] == len(smol_tokenizer.tok(chat, add_special_tokens=False)["input_ids"])  # the CR of a CRLF line is not part of the prompt
    res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--system", "x"])
    one_line(res, 2, "--system needs --input-format text")


def test_results_on_a_terminal_are_not_written_onto_the_progress_bar(tmp_path, model):
    import pty
    import re as _re

    main, side = pty.openpty()
    src = write_input(tmp_path / "in.jsonl", ROWS)
    proc = subprocess.Popen([sys.executable, "-m", "batchcli.cli", "run", src, "-o", "-", "--model", model],
                            stdin=subprocess.DEVNULL, stdout=side, stderr=side, env={**os.environ, "TERM": "xterm"})
    os.close(side)
    screen = b""
    while chunk := _read_pty(main):
        screen += chunk
    assert proc.wait(timeout=60) == 0
    text = _re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace")).replace("\r", "\n")
    records = [line for line in text.splitlines() if '"id"' in line]
    assert len(records) == 4 and all(line.startswith("{") for line in records), text


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side closed
        return b""


STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d batchllm: "
MIXED = [ROWS[0], b"{bad\n", {"id": "neg", "prompt": "x", "top_k": -1}]


def test_every_log_line_has_a_time_and_the_log_names_the_files(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", MIXED), tmp_path / "out.jsonl"
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model])  # stderr is no terminal here
    assert res.exit_code == 3, res.stderr
    log = res.stderr.splitlines()
    assert log and all(re.match(STAMP, line) for line in log), res.stderr
    assert any(f"run {src} -> {out}" in line for line in log), res.stderr


def test_the_summary_names_the_files_and_the_first_failed_requests(tmp_path, model):
    src, out, errors = write_input(tmp_path / "in.jsonl", MIXED), tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    res = runner.invoke(app, ["run", src, "-o", str(out), "--errors", str(errors), "--model", model])
    assert res.exit_code == 3, res.stderr
    assert f"wrote 1 result to {out} and 2 error lines to {errors}" in res.stderr
    assert "2 error lines: 1 invalid_json, 1 invalid_value; first: line-2 (invalid_json), neg (invalid_value)" in res.stderr
    assert "1 request," in res.stderr and not re.search(r"(?<!/)\b1 requests", res.stderr)


def test_the_plan_summary_on_a_log_is_whole_and_in_plain_words(tmp_path, model):
    long = "You are a careful assistant who answers every question briefly and politely, citing sources. " * 3
    rows = [{"id": f"question-with-a-long-id-{i}", "prompt": f"{long}Question {i}?"} for i in range(3)]
    src = write_input(tmp_path / "in.jsonl", rows)
    res = runner.invoke(app, ["plan", src, "-o", str(tmp_path / "p.json"), "--model", model, "--block-size", "4"])
    assert res.exit_code == 0, res.stderr
    log = res.stderr.splitlines()
    assert log[0] == f"plan for {os.path.basename(model)} (sharing multi, KV blocks of 4 tokens)"  # one line
    (node,) = [line for line in log if "e.g. question-with-a-long-id-" in line]  # not cropped at 80 columns
    assert re.search(r"\d+ prompt tokens from the start, shared by 3 sequences: 'You are a careful", node), node
    assert "prompt computation saved by sharing" in res.stderr and "physical" not in res.stderr


def test_a_refused_plan_names_what_differs(tmp_path, model):
    src, plan = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "p.json"
    assert runner.invoke(app, ["plan", src, "-o", str(plan), "--model", model, "--block-size", "8"]).exit_code == 0

    def refusal(source: str, *flags: str) -> str:
        res = runner.invoke(app, ["run", source, "--plan", str(plan), "-o", "-", "--model", model, "--quiet", *flags])
        one_line(res, 1, "make a new one with `batchllm plan`")
        return res.stderr

    assert "with --block-size 8, and this run asks for --block-size 16" in refusal(src, "--block-size", "16")
    assert "with --sharing multi, and this run asks for --sharing off" in refusal(src, "--sharing", "off", "--block-size", "8")
    edited = write_input(tmp_path / "edited.jsonl", [{**ROWS[0], "prompt": "Another question?"}, *ROWS[1:]])
    assert "the prompts, ids, max_tokens or n of this input differ" in refusal(edited)


def test_help_groups_the_options_and_shows_choices():
    text = help_text("run")
    panels = ["Input and output", "Model", "Sampling defaults", "Engine and plan", "Many workers (Ray)"]
    assert [text.index(f"╭─ {p}") for p in panels] == sorted(text.index(f"╭─ {p}") for p in panels)
    for choices in ("<completion|input>", "<auto|cpu|cuda>", "<multi|single|off>", "<plan|input>", "<jsonl|text>"):
        assert choices in text, choices
    for command in (["run"], ["plan"], []):
        words = help_text(*command)
        assert "<bool>" not in words and "--help Show this message" in words, command


def test_messages_name_the_flag_or_variable_to_use(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    assert runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet"]).exit_code == 0
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model])
    one_line(res, 1, "exists", "--resume", "--overwrite")
    res = runner.invoke(app, ["run", src, "-o", "-"], env={"BATCHLLM_MODEL": str(tmp_path / "nope")})
    one_line(res, 1, "$BATCHLLM_MODEL", "nope")


def test_stdin_on_a_terminal_says_it_is_read(tmp_path, model):
    import pty

    main, side = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "batchcli.cli", "run", "-", "-o", "-", "--model", model],
                            stdin=side, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(side)
    os.write(main, b"\x04")  # Ctrl-D: the end of what the person typed (nothing)
    _, err = proc.communicate(timeout=120)
    os.close(main)
    assert proc.returncode == 0 and "reading JSONL from stdin (the terminal); end it with Ctrl-D" in err, err


def test_status_tells_a_running_a_killed_and_a_finished_job(tmp_path, model):
    from batchcli.io.lock import OutputLock

    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet", "--max-tokens", "3"])
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(app, ["status", str(out)])
    assert res.exit_code == 0 and f"{out}: finished;" in res.stdout, res.stdout
    assert "answered 4 of 4 lines (4 results, 0 error lines), 0 left" in res.stdout
    assert re.search(r"last run: 4/4 requests in \d+s, prefill [\d,]+ tok/s", res.stdout), res.stdout
    out.write_bytes(out.read_bytes().splitlines(keepends=True)[0])  # as if killed after the first result
    doc = json.loads((tmp_path / "out.jsonl.status.json").read_text())
    (tmp_path / "out.jsonl.status.json").write_text(json.dumps({**doc, "state": "running"}))
    res = runner.invoke(app, ["status", str(out), "--json"])
    state = json.loads(res.stdout)
    assert (state["state"], state["pid"], state["answered"], state["left"]) == (
        "stopped without finishing (killed?)", None, 1, 3)
    res = runner.invoke(app, ["status", str(out)])
    assert f"batchllm run {src} -o {out} --resume would run the 3 lines left with the job's options: --model {model} --max-tokens 3" in res.stdout
    with OutputLock(out):  # a run writing it now
        res = runner.invoke(app, ["status", str(out)])
    assert f"{out}: running (pid {os.getpid()})" in res.stdout and "ETA" in res.stdout, res.stdout
    one_line(runner.invoke(app, ["status", str(tmp_path / "none.jsonl")]), 1, "no job at")


def test_plan_dry_run_estimates_time_and_kv_bytes_and_says_how_sure(tmp_path, model, smol_dir):
    from batchcli.model_config import load_config
    from batchcli.estimate import MEASURED_PARAMETERS, _parameters
    from batchcli.planning.sharding import CPU_COSTS

    assert _parameters(load_config(smol_dir)) == MEASURED_PARAMETERS  # the costs' model, counted as any other
    src = write_input(tmp_path / "in.jsonl", ROWS)
    res = runner.invoke(app, ["plan", src, "--dry-run", "--json", "--model", model])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    est, arch = doc["estimate"], load_config(model)
    assert est["output_tokens"] == 4 + 3 + 2 + 2 * 2  # max_tokens x n
    assert est["prefill_tokens"] == doc["physical_prefill_tokens"]
    scale = _parameters(arch) / MEASURED_PARAMETERS
    assert est["seconds"] == pytest.approx(scale * (est["prefill_tokens"] * CPU_COSTS.prefill_s + 13 * CPU_COSTS.decode_s))
    element = {"bfloat16": 2, "float32": 4}[est["kv_dtype"]]
    assert est["kv_peak_bytes"] == doc["est_kv_peak_tokens"] * 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * element
    assert est["basis"].startswith("rough")
    res = runner.invoke(app, ["plan", src, "--dry-run", "--model", model])
    assert "estimated run on this CPU: about" in res.stdout and "How sure: rough" in res.stdout
