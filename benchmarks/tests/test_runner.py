from pathlib import Path

from benchmarks.peers.base import Job, RunOutcome
from benchmarks.runner import ABLATIONS, Settings, checked, kv_bytes_per_token, plan_pass
from benchmarks.workloads import ALL_PEERS, ablation_bench, benches, build


def settings(tmp_path: Path, **kw) -> Settings:
    base = {"quick": True, "model": tmp_path, "dtype": "float32", "peers": ALL_PEERS,
            "only": (), "repeats": 3, "budget_s": 100.0, "noise_limit": 0.05, "work_dir": tmp_path,
            "run_timeout_s": 10.0, "batchllm_exe": tmp_path / "batchllm"}
    return Settings(**(base | kw))


def test_passes_alternate_engines_and_run_slow_ones_once(tmp_path):
    s = settings(tmp_path)
    built = [build(b, tmp_path) for b in benches(True) if b.name in ("paper", "multi-level")]
    built.append(build(ablation_bench(True), tmp_path))
    first = [(b.bench.name, name, v[0]) for b, name, v in plan_pass(s, built, 0)]
    second = [(b.bench.name, name, v[0]) for b, name, v in plan_pass(s, built, 1)]
    assert [x[1:] for x in first if x[0] == "paper"] == [("batchllm", ""), ("batchllm-eager", ""), ("vllm", ""),
                                                         ("transformers", "")]
    assert [x[1] for x in first if x[0] == "multi-level"] == ["batchllm-eager", "vllm", "batchllm"]
    assert [x[1] for x in second if x[0] == "paper"] == ["batchllm-eager", "vllm", "batchllm"], \
        "pass 1 rotates and drops transformers"
    assert [x[2] for x in first if x[0] == "ablation"] == [a[0] for a in ABLATIONS]
    assert not any(x[0] == "ablation" for x in second)


def test_peers_filter_applies(tmp_path):
    s = settings(tmp_path, peers=("vllm",))
    built = [build(b, tmp_path) for b in benches(True) if b.name == "paper"] + [build(ablation_bench(True), tmp_path)]
    assert [name for _, name, _ in plan_pass(s, built, 0)] == ["vllm"]


class Scripted:
    name = "scripted"

    def __init__(self, shares, ok=True):
        self.shares, self.calls, self.ok = list(shares), 0, ok

    def run(self, job):
        self.calls += 1
        return RunOutcome(peer=self.name, workload=job.workload, variant="", others_share=self.shares.pop(0),
                          error=None if self.ok else "broken")

    def close(self):
        pass


def test_noisy_run_is_rerun_once_and_flagged(tmp_path):
    s, job = settings(tmp_path), Job("w", tmp_path / "in", tmp_path, 1)
    calm = Scripted([0.5, 0.01])
    assert checked(s, calm, job).extra == {"reruns": 1, "noisy": False} and calm.calls == 2
    loud = Scripted([0.5, 0.4, 0.3])
    assert checked(s, loud, job).extra["noisy"] is True and loud.calls == 2
    quiet = Scripted([0.01])
    assert checked(s, quiet, job).extra == {} and quiet.calls == 1
    broken = Scripted([0.9], ok=False)
    assert not checked(s, broken, job).ok and broken.calls == 1


def test_kv_bytes_per_token(tiny_model):
    # 2 (K and V) x 2 layers x 1 KV head x head_dim 4 x 2 bytes
    assert kv_bytes_per_token(tiny_model, "bfloat16") == 32
    assert kv_bytes_per_token(tiny_model, "float32") == 64


def test_eager_runs_next_to_batchllm_on_every_bench_but_the_ablations(tmp_path):
    built = [build(b, tmp_path) for b in benches(True)] + [build(ablation_bench(True), tmp_path)]
    runs = plan_pass(settings(tmp_path), built, 0)
    with_batchllm = {b.bench.name for b, name, _ in runs if name == "batchllm" and b.bench.name != "ablation"}
    with_eager = {b.bench.name for b, name, _ in runs if name == "batchllm-eager"}
    assert with_eager == with_batchllm == {b.name for b in benches(True)}
