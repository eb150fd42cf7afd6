"""Outputs and plans trusted to nothing: exactly-once resume, the job record, the lock, edited plans."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from batchcli.cli import app
from batchcli.io.lock import OutputLock
from test_cli import ROWS, lines, model, runner, write_input  # noqa: F401 - model is a fixture


def run(*args: str):
    return runner.invoke(app, ["run", *args, "--quiet"])


def keep_only(path, wanted) -> None:
    """Cut the output down to the records `wanted` picks, as a kill before the others would."""
    kept = [line for line in path.read_bytes().splitlines(keepends=True) if wanted(orjson.loads(line))]
    path.write_bytes(b"".join(kept))


def test_a_duplicate_ids_error_record_does_not_hide_the_valid_request(tmp_path, model):
    rows = [{"id": "q1", "prompt_token_ids": [5, 6], "max_tokens": 2}, {"id": "q1", "prompt": "again"},
            {"id": "line-4", "prompt_token_ids": [7, 8], "max_tokens": 2}, b"{bad json\n"]
    src, out = write_input(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    res = run(src, "-o", str(out), "--model", model)
    assert res.exit_code == 3, res.stderr
    records = lines(out.read_text())
    assert len({r["id"] for r in records}) == 4  # one record per line, no id twice
    keep_only(out, lambda r: "error" in r)  # killed after the error lines, before any result
    res = run(src, "-o", str(out), "--model", model, "--resume")
    assert res.exit_code == 0, res.stderr
    records = lines(out.read_text())
    assert sorted(r.get("line", 0) for r in records if "error" in r) == [2, 4]
    assert sorted(r["id"] for r in records if "text" in r) == ["line-4", "q1"]


def test_resume_into_another_inputs_output_is_refused(tmp_path, model):
    src, out = write_input(tmp_path / "a.jsonl", ROWS), tmp_path / "out.jsonl"
    assert run(src, "-o", str(out), "--model", model).exit_code == 0
    keep_only(out, lambda r: r["id"] == "a")
    other = write_input(tmp_path / "b.jsonl", [{**r, "max_tokens": 1} for r in ROWS])
    before = out.read_bytes()
    res = run(other, "-o", str(out), "--model", model, "--resume")
    assert res.exit_code == 1 and "for other input lines" in res.stderr and "--overwrite" in res.stderr
    assert out.read_bytes() == before and len(res.stderr.strip().splitlines()) == 1
    (tmp_path / "out.jsonl.job.json").unlink()  # records, but nothing says which job wrote them
    res = run(src, "-o", str(out), "--model", model, "--resume")
    assert res.exit_code == 1 and "no job record" in res.stderr


def test_resume_alone_takes_the_jobs_options_and_a_different_one_is_refused_by_name(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", [{**r, "max_tokens": None} for r in ROWS[:3]]), tmp_path / "out.jsonl"
    flags = ["--model", model, "--max-tokens", "3", "--temperature", "0.7", "--seed", "3", "--stop", "x"]
    assert run(src, "-o", str(tmp_path / "whole.jsonl"), *flags).exit_code == 0
    assert run(src, "-o", str(out), *flags, "--admission", "2").exit_code == 0
    record = orjson.loads((tmp_path / "out.jsonl.job.json").read_bytes())
    assert record["options"] == {"--model": model, "--max-tokens": 3, "--temperature": 0.7, "--seed": 3,
                                 "--stop": ["x"], "--admission": "2"}  # readable, as the flags were given
    keep_only(out, lambda r: r["id"] == "a")
    res = run(src, "-o", str(out), "--resume", "--temperature", "0.9")
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--temperature 0.9" in res.stderr and "--temperature 0.7" in res.stderr and "leave --temperature out" in res.stderr
    res = run(src, "-o", str(out), "--resume", "--seed", "3", "--admission", "1")  # the same seed; another admission
    assert res.exit_code == 0, res.stderr
    by_id = {r["id"]: r for r in lines(out.read_text())}
    assert by_id == {r["id"]: r for r in lines((tmp_path / "whole.jsonl").read_text())}  # as the first run would


def test_a_resume_under_another_model_names_both(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    os.symlink(model, tmp_path / "other-model")  # the same files under another name: another model to the job
    res = runner.invoke(app, ["run", src, "-o", str(out), "--quiet"], env={"BATCHLLM_MODEL": model})
    assert res.exit_code == 0, res.stderr
    keep_only(out, lambda r: r["id"] == "a")
    res = runner.invoke(app, ["run", src, "-o", str(out), "--quiet", "--resume"],
                        env={"BATCHLLM_MODEL": str(tmp_path / "other-model")})
    name = os.path.basename(model)
    assert res.exit_code == 1 and f"with model {name!r}, this run uses 'other-model'" in res.stderr, res.stderr


def test_output_that_is_the_input_is_refused(tmp_path, model):
    src = write_input(tmp_path / "in.jsonl", ROWS)
    before = (tmp_path / "in.jsonl").read_bytes()
    os.symlink(src, tmp_path / "link.jsonl")
    for target, flag in ((src, "--overwrite"), (str(tmp_path / "link.jsonl"), "--overwrite"), (src, "--resume")):
        res = run(src, "-o", target, "--model", model, flag)
        assert res.exit_code == 1 and "is the input file" in res.stderr, (target, flag, res.stderr)
    assert (tmp_path / "in.jsonl").read_bytes() == before


def test_a_second_run_on_a_locked_output_exits_1_naming_the_holder(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    with OutputLock(out):
        res = run(src, "-o", str(out), "--model", model, "--overwrite")
    assert res.exit_code == 1 and f"pid {os.getpid()}" in res.stderr
    assert not out.exists()  # the refused run wrote nothing


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path, model):
    src, out = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from batchcli.io.lock import OutputLock; "
                               "OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()  # kill -9: no cleanup, the lock file stays behind
    holder.wait()
    assert (tmp_path / "out.jsonl.lock").exists()
    res = run(src, "-o", str(out), "--model", model)
    assert res.exit_code == 0, res.stderr
    assert sorted(r["id"] for r in lines(out.read_text())) == ["a", "b", "c", "d"]
    assert not (tmp_path / "out.jsonl.lock").exists()


def test_an_edited_plan_is_refused_in_one_line(tmp_path, model):
    rows = [{"id": f"r{i}", "prompt_token_ids": [5] * 12 + [9 + i], "max_tokens": 2} for i in range(4)]
    rows.append({"id": "solo", "prompt_token_ids": [40, 41], "max_tokens": 2})
    src = write_input(tmp_path / "in.jsonl", rows)
    res = runner.invoke(app, ["plan", src, "-o", "-", "--model", model, "--block-size", "4"])
    plan = orjson.loads(res.stdout)
    assert plan["segments"]["count"] == [4]
    edits = {"leaf": lambda p: p["leaf"].reverse(), "count": lambda p: p["segments"]["count"].__setitem__(0, 3),
             "length": lambda p: p["segments"]["length"].__setitem__(0, 9999)}
    for name, edit in edits.items():
        doc = orjson.loads(res.stdout)
        edit(doc)
        (tmp_path / "p.json").write_bytes(orjson.dumps(doc))
        bad = run(src, "--plan", str(tmp_path / "p.json"), "-o", "-", "--model", model, "--block-size", "4")
        assert bad.exit_code == 1 and "does not match the plan of this input" in bad.stderr, (name, bad.stderr)
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""
