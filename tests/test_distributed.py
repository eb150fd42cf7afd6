"""One job on many engine workers (Ray), on a local cluster started once for the session.

Every test checks the exactly-once contract: each request of the job is answered once, by whichever
worker, whatever died on the way.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

import batchcli
from batchcli.cli import app
from batchcli.engine.config import EngineConfig
from batchcli.errors import WorkerError
from helpers_models import save_tiny_with_tokenizer

ray = pytest.importorskip("ray")

from batchcli.distributed import ClusterOptions  # noqa: E402 - after the skip: these import ray
from batchcli.distributed.cluster import run_on_cluster  # noqa: E402
from batchcli.distributed.worker import ShardWorker  # noqa: E402

runner = CliRunner()
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ray_address() -> str:
    """A local 2-CPU cluster; its workers import this checkout's batchcli and these tests (PYTHONPATH
    is inherited from here by the cluster's processes)."""
    src = Path(batchcli.__file__).resolve().parents[1]
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(src), str(TESTS), os.environ.get("PYTHONPATH")) if p))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def model(tmp_path_factory, smol_dir) -> Path:
    """A tiny random Llama with the default model's tokenizer (chat template included)."""
    return save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-ray"), smol_dir)


SYSTEM = "You are a careful assistant. Answer in one short sentence, and say nothing else at all. " * 2
ROWS = (
    [{"id": f"shared-{i}", "prompt": f"{SYSTEM}Question {i}: what is {i} + {i}?", "max_tokens": 3 + i % 5}
     for i in range(8)]
    + [{"id": f"alone-{i}", "prompt": f"An unshared prompt number {i} about {'x' * i}", "max_tokens": 6}
       for i in range(4)]
    + [{"id": "chat", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
        "max_tokens": 5},
       {"id": "sampled", "prompt_token_ids": [5, 6, 7, 8, 9], "max_tokens": 6, "n": 3, "temperature": 0.8,
        "seed": 7},
       {"id": "greedy-n", "prompt": f"{SYSTEM}Twice:", "max_tokens": 4, "n": 2}]
)


def write_rows(path: Path, rows) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return str(path)


def read_lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def by_id(records: list[dict]) -> dict[str, dict]:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"an id was written twice: {sorted(ids)}"
    return {r["id"]: r for r in records}


def tokens_of(record: dict) -> tuple:
    """What must not depend on how the job was split (cached_tokens may: sharing across shards is lost)."""
    usage = record["usage"]
    texts = tuple(c["text"] for c in record["choices"]) if "choices" in record else (record["text"],)
    return texts, usage["prompt_tokens"], usage["completion_tokens"]


@pytest.mark.slow
def test_two_workers_write_what_one_process_writes(tmp_path, model, ray_address):
    src = write_rows(tmp_path / "in.jsonl", ROWS)
    common = ["--model", str(model), "--dtype", "float32", "--quiet"]
    one = runner.invoke(app, ["run", src, "-o", str(tmp_path / "one.jsonl"), *common])
    assert one.exit_code == 0, one.stderr
    two = runner.invoke(app, ["run", src, "-o", str(tmp_path / "two.jsonl"), "--workers", "2", "--order", "input",
                              "--metrics", str(tmp_path / "m.json"), *common])
    assert two.exit_code == 0, two.stderr
    expected, got = by_id(read_lines(tmp_path / "one.jsonl")), read_lines(tmp_path / "two.jsonl")
    assert [r["id"] for r in got] == [r["id"] for r in ROWS]  # --order input holds across workers
    assert {k: tokens_of(r) for k, r in by_id(got).items()} == {k: tokens_of(r) for k, r in expected.items()}
    metrics = orjson.loads((tmp_path / "m.json").read_bytes())
    workers = metrics["workers"]
    assert len(workers) == 2 and all(w["requests"] > 0 and w["threads"] == 1 for w in workers)
    assert sum(w["requests"] for w in workers) == metrics["requests"] == len(ROWS)
    assert sum(w["completion_tokens"] for w in workers) == metrics["completion_tokens"]
    shards = metrics["balance"]["shards"]
    assert shards >= 2 and sorted(s for w in workers for s in w["shards"]) == list(range(shards))  # each run once
    assert metrics["balance"]["skew_measured"] >= 0 and all(w["estimated_s"] > 0 for w in workers)


class KilledOnce(ShardWorker):
    """Finishes a request every 50 ms at most; the first worker to send a batch of events is then
    killed with ray.kill (the others run on)."""

    def load(self):
        info = super().load()
        run = self._engine.run

        def slowly(shard, on_event, *args, **kwargs):
            return run(shard, lambda event: (time.sleep(0.05), on_event(event)), *args, **kwargs)

        self._engine.run = slowly  # so a shard spans several batches, and the kill lands mid-shard
        return info

    def run(self, shard):
        for batch in super().run(shard):
            yield batch
            if batch.events and _first_to_create(self._model_dir / "killed"):
                # from another process: an actor's ray.kill of itself waits for its running call to end
                _kill.remote(ray.get_runtime_context().current_actor)
                time.sleep(30)


@ray.remote(num_cpus=0)
def _kill(actor) -> None:
    ray.kill(actor)


def _first_to_create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class _NoStop:
    requested = False


def _whole(model: Path, rows, tmp_path: Path):
    """The job of `rows` as one shard, and its requests (what events name)."""
    from batchcli.pipeline import prepare
    from batchcli.planning.plan import PlanSettings
    from batchcli.params import SamplingParams

    job = prepare(write_rows(tmp_path / "job.jsonl", rows), SamplingParams(), PlanSettings(), model)
    return job.shard()


def _halves(whole):
    """Split in the plan's order: first and second half (a split a test can reason about)."""
    order = whole.plan.order
    half = len(order) // 2
    return lambda workers: [whole.subset(sorted(order[:half])), whole.subset(sorted(order[half:]))]


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_every_request_answered_once(tmp_path, model, ray_address):
    own = tmp_path / "model"
    shutil.copytree(model, own)
    rows = [{"id": f"r{i}", "prompt": f"{SYSTEM}Item {i}", "max_tokens": 4 + 3 * (i % 9), "ignore_eos": True}
            for i in range(24)]
    whole = _whole(own, rows, tmp_path)
    events = []
    done = run_on_cluster(ClusterOptions(workers=2), _halves(whole), own, EngineConfig(dtype="float32"),
                          events.append, lambda p: None, _NoStop(), worker_cls=KilledOnce)
    assert sorted(e.request for e in events) == list(range(len(rows)))  # all, each once
    assert (own / "killed").is_file() and len(done.retries) == 1
    retry = done.retries[0]
    died = done.workers[retry.worker]
    assert died.died and "died" in retry.reason
    assert 0 < died.requests and 0 < retry.resent == len(rows) // 2 - died.requests  # answered ones not resent
    assert sum(w.requests for w in done.workers) == len(rows)


class FailsOnRequestZero(ShardWorker):
    def run(self, shard):
        if 0 in shard.index:
            raise RuntimeError("injected engine failure\nwith a second line")
        yield from super().run(shard)


@pytest.mark.slow
def test_a_shard_that_keeps_failing_stops_the_job_with_one_line(tmp_path, model, ray_address):
    whole = _whole(model, ROWS[:6], tmp_path)
    events = []
    with pytest.raises(WorkerError) as info:
        run_on_cluster(ClusterOptions(workers=2), _halves(whole), model, EngineConfig(dtype="float32"),
                       events.append, lambda p: None, _NoStop(), worker_cls=FailsOnRequestZero)
    message = str(info.value)
    assert "\n" not in message and "failed 3 times" in message and "RuntimeError" in message
    assert "injected engine failure" in message and "--resume" in message
    assert 0 not in {e.request for e in events} and len({e.request for e in events}) == len(events)


class _Stop:
    requested = False


@pytest.mark.slow
def test_a_stop_hands_out_no_more_shards_and_the_running_ones_finish(tmp_path, model, ray_address):
    whole = _whole(model, ROWS, tmp_path)
    order = whole.plan.order
    quarters = [whole.subset(sorted(order[k::4])) for k in range(4)]
    stop, events = _Stop(), []

    def on_event(event):
        stop.requested = True  # as the first SIGINT does
        events.append(event.request)

    done = run_on_cluster(ClusterOptions(workers=2), lambda workers: quarters, model, EngineConfig(dtype="float32"),
                          on_event, lambda p: None, stop)
    started = {r for q in quarters[:2] for r in q.index}  # the two shards handed out before the stop
    assert len(events) == len(set(events)) and 0 < len(events) and set(events) <= started
    assert sorted(s for w in done.workers for s in w.shards) == [0, 1] and not done.retries


@pytest.mark.slow
def test_driver_killed_then_resume_answers_every_line_once(tmp_path, model, ray_address):
    rows = [{"id": f"k{i}", "prompt": f"{SYSTEM}Line {i}", "max_tokens": 48, "ignore_eos": True} for i in range(48)]
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["run", src, "-o", str(out), "--model", str(model), "--dtype", "float32", "--quiet", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(batchcli.__file__).resolve().parents[1]), str(TESTS)])}
    driver = subprocess.Popen([sys.executable, "-m", "batchcli.cli", *args, "--ray-address", ray_address], env=env,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and driver.poll() is None and not (out.is_file() and out.read_bytes().count(b"\n")):
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, driver.stderr.read().decode()
    before = out.read_bytes().count(b"\n")
    assert 0 < before < len(rows)  # killed mid-run
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.stderr
    assert sorted(by_id(read_lines(out))) == sorted(r["id"] for r in rows)


def test_workers_without_ray_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "batchcli.distributed."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    src = write_rows(tmp_path / "in.jsonl", ROWS[:1])
    res = runner.invoke(app, ["run", src, "-o", str(tmp_path / "out.jsonl"), "--workers", "2"])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "pip install 'batchllm[ray]'" in res.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_node_without_the_model_is_one_line_naming_it(tmp_path):
    worker = ShardWorker(tmp_path / "nowhere", EngineConfig(), threads=1)
    with pytest.raises(WorkerError) as info:
        worker.load()
    message = str(info.value)
    assert "\n" not in message and socket.gethostname() in message and str(tmp_path / "nowhere") in message


@pytest.mark.slow
def test_pooled_lines_on_two_workers_equal_one_process(tmp_path, model, ray_address):
    """Embeddings, score and rerank parts spread over shards: each line is still written once, whole."""
    import numpy as np

    rows = [{"custom_id": f"e{k}", "method": "POST", "url": "/v1/embeddings",
             "body": {"input": [f"{SYSTEM}Query {k}: {w}" for w in ("cats", "dogs", "owls")]}} for k in range(3)]
    rows += [{"custom_id": "r", "method": "POST", "url": "/v1/rerank",
              "body": {"query": "Do cats purr?", "documents": [f"Document {i} about {'cats ' * i}" for i in range(6)]}},
             {"id": "p", "input": ["plain a", "plain b"]}, *ROWS[:4]]
    src = write_rows(tmp_path / "in.jsonl", rows)
    common = ["--model", str(model), "--dtype", "float32", "--quiet", "--order", "input"]
    assert runner.invoke(app, ["run", src, "-o", str(tmp_path / "one.jsonl"), *common]).exit_code == 0
    two = runner.invoke(app, ["run", src, "-o", str(tmp_path / "two.jsonl"), "--workers", "2", *common])
    assert two.exit_code == 0, two.stderr
    one, got = read_lines(tmp_path / "one.jsonl"), read_lines(tmp_path / "two.jsonl")
    assert [r.get("custom_id") or r["id"] for r in got] == [r.get("custom_id") or r["id"] for r in rows]

    def values(record: dict) -> list[float]:
        body = record["response"]["body"] if "response" in record else record
        if "data" in body:
            return [x for d in body["data"] for x in d["embedding"]]
        if "results" in body:
            return [x for r in body["results"] for x in (r["index"], r["relevance_score"])]
        return [x for e in body.get("embeddings", []) for x in e] or [0.0]

    for a, b in zip(one, got):
        assert np.allclose(values(a), values(b), atol=1e-5), a.get("custom_id") or a["id"]
