import json
import os
import sys
import time
from pathlib import Path

from benchmarks.peers.base import Job
from benchmarks.peers.batchllm import BatchllmPeer
from benchmarks.peers.remote import WorkerPeer


def job_for(tmp_path: Path, rows: list[dict], **kw) -> Job:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return Job("w", path, out, max(r["max_tokens"] for r in rows), **kw)


ROWS = [{"id": "a", "prompt_token_ids": [5, 6, 7], "max_tokens": 2}, {"id": "b", "prompt_token_ids": [5, 6], "max_tokens": 4}]


def test_batchllm_peer_reads_metrics_and_passes_the_cli_contract(tmp_path, fake_cli, tiny_model):
    job = job_for(tmp_path, ROWS, kv_budget_tokens=100, variant="sharing-off", flags=("--sharing", "off"))
    o = BatchllmPeer(tiny_model, "bfloat16", fake_cli).run(job)
    assert o.ok, o.error
    assert (o.gen_s, o.prompt_tokens, o.completion_tokens, o.cached_tokens) == (1.25, 5, 6, 2)
    assert o.computed_prompt_tokens == round(5 * (1 - 0.5))
    assert o.total_s > 0 and o.peak_rss_mib > 0 and 0 <= o.others_share <= 1
    assert o.extra == {"saving_ratio": 0.5, "steps": 7, "preemptions": 0, "peak_kv_bytes": 2**20}
    argv = json.loads(Path(o.out_path).with_suffix(".metrics.json").read_text())["argv"]
    assert argv[:2] == ["run", str(job.path)]
    for flag in ("--overwrite", "--quiet", "--ignore-eos"):
        assert flag in argv
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1)}
    assert pairs["--max-tokens"] == "4" and pairs["--temperature"] == "0" and pairs["--dtype"] == "bfloat16"
    assert pairs["--kv-budget"] == "100tok" and pairs["--sharing"] == "off" and pairs["--model"] == str(tiny_model)


def test_engine_flags_go_on_every_run_before_the_jobs_own(tmp_path, fake_cli, tiny_model):
    peer = BatchllmPeer(tiny_model, "float32", fake_cli, "batchllm-eager", ("--compile", "off"))
    o = peer.run(job_for(tmp_path, ROWS, variant="sharing-off", flags=("--sharing", "off")))
    assert o.ok and o.peer == "batchllm-eager", o.error
    assert Path(o.out_path).name == "batchllm-eager-sharing-off.jsonl", "engines must not share output files"
    argv = json.loads(Path(o.out_path).with_suffix(".metrics.json").read_text())["argv"]
    assert argv[-4:] == ["--compile", "off", "--sharing", "off"]


def test_batchllm_failure_is_an_error_outcome_not_a_crash(tmp_path, fake_cli, tiny_model, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    o = BatchllmPeer(tiny_model, "float32", fake_cli).run(job_for(tmp_path, ROWS))
    assert not o.ok and "exit 1" in o.error and "no module named batchcli.cli" in o.error


def test_missing_batchllm_is_an_error_outcome(tmp_path, tiny_model):
    o = BatchllmPeer(tiny_model, "float32", tmp_path / "nope").run(job_for(tmp_path, ROWS))
    assert not o.ok and "not found" in o.error


def test_timeout_kills_the_whole_process_group(tmp_path, fake_cli, tiny_model, monkeypatch):
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv("FAKE_MODE", "hang")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    o = BatchllmPeer(tiny_model, "float32", fake_cli).run(job_for(tmp_path, ROWS, timeout_s=3.0))
    assert not o.ok and o.error.startswith("timed out")
    assert_gone(int(pidfile.read_text()))


def assert_gone(pid: int) -> None:
    """The process has exited (a zombie awaiting its reaper counts as gone)."""
    deadline = time.time() + 5
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        assert time.time() < deadline, f"process {pid} survived"
        time.sleep(0.05)


ECHO_WORKER = """
import sys
from benchmarks.peers.worker import Generation, serve
class Echo:
    def generate(self, prompts, max_tokens, options):
        if options.get("boom"):
            raise ValueError("boom requested")
        outs = [p[:1] * m for p, m in zip(prompts, max_tokens)]
        return Generation(outs, [str(o) for o in outs], cached_tokens=1, extra={"batch_size": options.get("batch_size")})
print("stray print must not break the protocol")
serve(lambda: Echo())
"""


def test_worker_peer_runs_jobs_through_the_line_protocol(tmp_path):
    peer = WorkerPeer("echo", [sys.executable, "-c", ECHO_WORKER], dict(os.environ), tmp_path / "echo.log",
                      options={"batch_size": 8})
    try:
        job = job_for(tmp_path, ROWS)
        first, second = peer.run(job), peer.run(job)
    finally:
        peer.close()
    assert first.ok and second.ok, (first.error, second.error)
    assert peer.proc.poll() is not None, "close() must end the worker"
    assert first.startup_s == second.startup_s > 0, "start-up is paid once per worker"
    assert (first.prompt_tokens, first.completion_tokens, first.cached_tokens, first.computed_prompt_tokens) == (5, 6, 1, 4)
    assert first.total_s == first.startup_s + first.gen_s and first.extra["batch_size"] == 8
    assert first.peak_rss_mib > 5 and first.extra["worker_start_s"] == first.startup_s and second.extra["worker_start_s"] == 0
    out = [json.loads(line) for line in Path(first.out_path).read_text().splitlines()]
    assert out == [{"id": "a", "token_ids": [5, 5], "text": "[5, 5]"}, {"id": "b", "token_ids": [5] * 4, "text": "[5, 5, 5, 5]"}]
    assert "stray print" in (tmp_path / "echo.log").read_text()


def test_worker_job_error_keeps_the_worker(tmp_path):
    peer = WorkerPeer("echo", [sys.executable, "-c", ECHO_WORKER], dict(os.environ), tmp_path / "echo.log",
                      options={"boom": True})
    try:
        bad = peer.run(job_for(tmp_path, ROWS))
        peer.options = {}
        good = peer.run(job_for(tmp_path, ROWS))
    finally:
        peer.close()
    assert not bad.ok and "boom requested" in bad.error
    assert good.ok


def test_worker_that_dies_at_start_fails_every_job_without_restarting(tmp_path):
    peer = WorkerPeer("dead", [sys.executable, "-c", "import sys; sys.exit('cannot import vllm')"], dict(os.environ),
                      tmp_path / "dead.log")
    first = peer.run(job_for(tmp_path, ROWS))
    pid = peer.proc.pid
    second = peer.run(job_for(tmp_path, ROWS))
    peer.close()
    assert not first.ok and "cannot import vllm" in first.error
    assert not second.ok and peer.proc.pid == pid


def test_close_ends_engine_subprocesses_too(tmp_path):
    pidfile = tmp_path / "engine.pid"
    spawner = (f"import subprocess, sys\n"
               f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
               f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n") + ECHO_WORKER
    peer = WorkerPeer("spawner", [sys.executable, "-c", spawner], dict(os.environ), tmp_path / "s.log")
    assert peer.run(job_for(tmp_path, ROWS)).ok
    peer.close()
    assert_gone(int(pidfile.read_text()))
