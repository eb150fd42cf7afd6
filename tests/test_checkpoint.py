"""Checkpoints of in-flight sequences: a resumed run continues them token for token, and a kill -9
loses no more than one interval; a damaged checkpoint file is refused in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import orjson
import pytest

from batchcli.cli import app
from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine
from batchcli.engine.resume import Checkpointing
from batchcli.params import SamplingParams
from helpers_models import save_tiny_checkpoint
from test_cli import lines, model, runner, write_input  # noqa: F401 - model is a fixture
from test_engine import EOS, make_job, run_records, shared_prompts


def _run(directory, job, checkpoint=None):
    got = {}
    engine = Engine(directory, EngineConfig(dtype="float32", attention="torch"), decode=lambda ids: "")
    stats = run_records(engine, job, lambda r: got.__setitem__(r.request.id, [c.token_ids for c in r.completions]),
                        checkpoint=checkpoint)
    return got, stats


def test_a_resumed_run_continues_checkpointed_samples_exactly(tmp_path):
    save_tiny_checkpoint(tmp_path, "llama", seed=4, eos_token_id=EOS)
    prompts = shared_prompts(1)
    params = [SamplingParams(max_tokens=12, ignore_eos=True) if i % 3 == 0 else
              SamplingParams(max_tokens=12, temperature=0.9, n=2, seed=i, ignore_eos=True)
              for i in range(len(prompts))]
    job = make_job(prompts, params, "multi")
    expected, full = _run(tmp_path, job)
    snapshots = []
    _run(tmp_path, job, Checkpointing(1e-9, snapshots.append))
    assert snapshots[-1] == []  # nothing left in flight at the end
    middle = snapshots[len(snapshots) // 2]
    assert any(s.rng_state is not None and not s.finished for f in middle for s in f.samples)
    restored = {f.request: f.samples for f in middle}
    got, resumed = _run(tmp_path, job, Checkpointing(0, lambda in_flight: None, restored))
    assert got == expected
    done_before = sum(len(s.generated) for f in middle for s in f.samples)
    assert resumed.decode_tokens <= full.decode_tokens - done_before + len(middle) * 2  # restored tokens were not redone


def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, model):
    rows = [{"id": "a", "prompt_token_ids": [5, 6], "max_tokens": 3}, {"id": "b", "prompt_token_ids": [7], "max_tokens": 3}]
    src, out = write_input(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    assert runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet"]).exit_code == 0
    out.write_bytes(out.read_bytes().splitlines(keepends=True)[0])
    answered = lines(out.read_text())[0]["id"]
    identity = orjson.loads((tmp_path / "out.jsonl.job.json").read_bytes())["identity"]
    other = "b" if answered == "a" else "a"
    ckpt = tmp_path / "out.jsonl.ckpt.json"
    ckpt.write_bytes(orjson.dumps({"version": 1, "identity": identity, "requests": {other: [[0, [999999], False, None]]}}))
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--quiet", "--resume"])
    assert res.exit_code == 1 and "checkpoint" in res.stderr and "delete it" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    ckpt.write_bytes(orjson.dumps({"version": 1, "identity": identity, "requests": {other: [[0, [9], False, None]]}}))
    res = runner.invoke(app, ["run", src, "-o", str(out), "--model", model, "--resume"])
    assert res.exit_code == 0 and "continuing 1 requests from checkpoint" in res.stderr, res.stderr
    assert sorted(r["id"] for r in lines(out.read_text())) == ["a", "b"] and not ckpt.exists()


@pytest.mark.slow
def test_kill_9_then_resume_finishes_from_the_checkpoint(tmp_path, model):
    rows = [{"id": f"q{i}", "prompt_token_ids": [7 + i % 5] * (5 + i % 7), "max_tokens": 80, "ignore_eos": True,
             **({"temperature": 0.8, "seed": i} if i % 2 else {})} for i in range(16)]
    src = write_input(tmp_path / "in.jsonl", rows)
    base = [sys.executable, "-m", "batchcli.cli", "run", src, "--model", model, "--dtype", "float32", "--quiet"]
    reference = subprocess.run([*base, "-o", str(tmp_path / "ref.jsonl"), "--checkpoint-every", "0"], timeout=300)
    assert reference.returncode == 0
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "out.jsonl.ckpt.json"
    proc = subprocess.Popen([*base, "-o", str(out), "--checkpoint-every", "0.2"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run finished before its first checkpoint; make the job longer"
    held = orjson.loads(ckpt.read_bytes())["requests"]
    assert held and any(s[1] for samples in held.values() for s in samples)
    res = subprocess.run([*base, "-o", str(out), "--resume", "--metrics", str(tmp_path / "m.json")], timeout=300)
    assert res.returncode == 0
    got = {r["id"]: r["text"] for r in lines(out.read_text())}
    assert len(lines(out.read_text())) == len(rows)  # every id exactly once
    assert got == {r["id"]: r["text"] for r in lines((tmp_path / "ref.jsonl").read_text())}
    assert not ckpt.exists()
    metrics = orjson.loads((tmp_path / "m.json").read_bytes())
    redone = [r for r in rows if r["id"] in held]
    assert metrics["decode_tokens"] < metrics["completion_tokens"] - len(redone)  # continued, not redone
