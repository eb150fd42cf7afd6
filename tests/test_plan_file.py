"""`run --plan`: the plan's own settings are the job's (the fingerprint is computed with them), a flag
that contradicts them is refused, and `--resume` replans the requests left with them."""

from __future__ import annotations

from pathlib import Path

from batchcli.cli import app
from batchcli.pipeline import plan_for, prepare, read_plan
from batchcli.planning.plan import PlanSettings
from batchcli.params import SamplingParams
from batchcli.io.writer import Answered
from test_cli import lines, model, runner, write_input  # noqa: F401 - model is a fixture

SHARED = "You are a careful assistant. Answer in one short sentence, and say nothing else at all. " * 3
ROWS = [{"id": f"q{i}", "prompt": f"{SHARED}Question {i}?", "max_tokens": 2} for i in range(4)]


def _plan(tmp_path: Path, model: str, *flags: str) -> tuple[str, Path]:
    src, plan = write_input(tmp_path / "in.jsonl", ROWS), tmp_path / "in.plan.json"
    res = runner.invoke(app, ["plan", src, "-o", str(plan), "--model", model, *flags])
    assert res.exit_code == 0, res.stderr
    return src, plan


def test_a_plan_made_with_another_block_size_runs_without_repeating_the_flag(tmp_path, model):
    src, plan = _plan(tmp_path, model, "--block-size", "32", "--sharing", "single")
    res = runner.invoke(app, ["run", src, "--plan", str(plan), "-o", "-", "--model", model])
    assert res.exit_code == 0, res.stderr
    assert "blocks of 32 tokens" in res.stderr  # the plan's block size, not the default 16
    assert sorted(r["id"] for r in lines(res.stdout)) == [r["id"] for r in ROWS]


def test_a_flag_that_contradicts_the_plan_is_refused_and_one_that_agrees_is_not(tmp_path, model):
    src, plan = _plan(tmp_path, model, "--block-size", "32")
    res = runner.invoke(app, ["run", src, "--plan", str(plan), "-o", "-", "--model", model, "--block-size", "16"])
    assert res.exit_code == 1 and "with --block-size 32, and this run asks for --block-size 16" in res.stderr, res.stderr
    res = runner.invoke(app, ["run", src, "--plan", str(plan), "-o", "-", "--model", model, "--quiet",
                              "--block-size", "32"])
    assert res.exit_code == 0, res.stderr


def test_resume_with_a_plan_replans_the_requests_left_with_the_plans_settings(tmp_path, model):
    src, plan = _plan(tmp_path, model, "--block-size", "32", "--sharing", "single")
    loaded = read_plan(plan)
    assert loaded.segments  # the prompts share a prefix at this block size
    job = prepare(src, SamplingParams(), None, Path(model), plan_file=plan, answered=Answered(frozenset({"q1"})))
    assert [r.id for r in job.tokenized.requests] == ["q0", "q2", "q3"] and job.skipped == 1
    assert job.plan.settings == loaded.settings == PlanSettings(block_size=32, sharing="single")
    assert job.plan == plan_for(job.tokenized, loaded.settings, Path(model).name, loaded.fingerprint)
    assert job.plan.stats.requests == 3 and job.plan.segments[0].count == 3


def test_a_resumed_run_with_its_plan_answers_every_line_once(tmp_path, model):
    src, plan = _plan(tmp_path, model, "--block-size", "32")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["run", src, "--plan", str(plan), "-o", str(out), "--model", model, "--quiet"])
    assert res.exit_code == 0, res.stderr
    out.write_bytes(out.read_bytes().splitlines(keepends=True)[0])  # as if killed after the first line
    res = runner.invoke(app, ["run", src, "--plan", str(plan), "-o", str(out), "--model", model, "--resume"])
    assert res.exit_code == 0, res.stderr
    assert "blocks of 32 tokens" in res.stderr
    assert sorted(r["id"] for r in lines(out.read_text())) == [r["id"] for r in ROWS]
