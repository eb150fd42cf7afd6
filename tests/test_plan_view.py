"""`plan --dry-run` for people (labelled tree, error lines with reasons) and `--json` for scripts;
`--help` that reads as the command line is typed."""

from __future__ import annotations

import orjson

from batchcli.cli import app
from test_cli import lines, model, runner, write_input  # noqa: F401 - model is a fixture

ROWS = [{"id": f"q{i}", "prompt": f"You are a careful assistant who answers briefly. Question {i}?"} for i in range(4)]


def test_dry_run_labels_nodes_and_names_error_lines(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", [*ROWS, b"{bad\n", {"id": "neg", "prompt": "x", "top_k": -1}])
    res = runner.invoke(app, ["plan", src, "--dry-run", "--model", model, "--block-size", "4"], terminal_width=200)
    assert res.exit_code == 3, res.stderr  # some lines are bad
    assert "'You are a careful assistant" in res.stdout and "e.g. q0" in res.stdout
    assert "2 error lines:" in res.stdout and "line 5 (line-5): invalid_json" in res.stdout
    assert "line 6 (neg): invalid_value: top_k must be >= 0" in res.stdout


def test_json_statistics_for_scripts(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", [*ROWS, b"{bad\n"])
    res = runner.invoke(app, ["plan", src, "--dry-run", "--json", "--model", model, "--block-size", "4"])
    assert res.exit_code == 3, res.stderr
    doc = orjson.loads(res.stdout)
    assert doc["requests"] == 4 and doc["errors"] == 1 and doc["saving_ratio"] > 0 and doc["segments"] >= 1
    assert doc["first_errors"] == [{"line": 5, "id": "line-5", "code": "invalid_json", "message": doc["first_errors"][0]["message"]}]


def test_help_shows_flags_as_flags_the_input_and_openai_fields():
    res = runner.invoke(app, ["run", "--help"], terminal_width=200)
    assert res.exit_code == 0
    flags = [line for line in res.stdout.splitlines()  # the option column, not a wrapped help text
             if line.startswith(("│ --resume", "│ --overwrite", "│ --quiet", "│ --ignore-eos"))]
    assert len(flags) == 4 and not any("<bool>" in line for line in flags), flags
    assert "INPUT" in res.stdout and "{input}" not in res.stdout
    words = " ".join(res.stdout.replace("│", " ").split())  # wrapped at the console's width
    assert "body fields honoured:" in words and "max_completion_tokens" in words
    assert "[.id, .text] | @tsv" in res.stdout
