"""The harness end to end with a fake `batchllm` CLI: the report comes from the runs it made."""

import json
from pathlib import Path

import pytest

from benchmarks import machine
from benchmarks.__main__ import main
from benchmarks.results_file import sections, split
from benchmarks.tests.test_machine import SAPPHIRE_RAPIDS


def run_main(tmp_path, fake_cli, tiny_model, *extra):
    argv = ["--quick", "--peers", "batchllm", "--model", str(tiny_model), "--batchllm", str(fake_cli),
            "--out", str(tmp_path / "report"), "--work-dir", str(tmp_path / "work"), "--dtype", "float32", *extra]
    return main(argv), json.loads((tmp_path / "report" / "results.json").read_text()), (tmp_path / "report" / "RESULTS.md").read_text()


def test_report_is_filled_from_measured_runs(tmp_path, fake_cli, tiny_model):
    rc, data, md = run_main(tmp_path, fake_cli, tiny_model, "--only", "paper,ablation")
    assert rc == 0
    paper = next(r for r in data["summary"] if r["workload"] == "paper")
    facts = next(w for w in data["workloads"] if w["name"] == "paper")
    assert paper["gen_s"] == 1.25  # the fake's wall_s - model_load_s - tokenizer_load_s
    assert paper["prompt_tps"] == facts["prompt_tokens"] / 1.25
    variants = [r["variant"] for r in data["summary"] if r["workload"] == "ablation"]
    assert variants == ["default", "sharing-off", "sharing-single", "schedule-input", "admission-16",
                        "attention-torch", "attention-gather"]
    flags = [json.loads(Path(r["out_path"]).with_suffix(".metrics.json").read_text())["argv"]
             for r in data["runs"] if r["variant"] == "attention-gather"]
    assert flags and flags[0][-2:] == ["--attention", "gather"]
    assert "## paper" in md and "## ablation" in md and "python -m benchmarks --quick" in md
    assert data["machine"]["peak_gflops"]["float32"] > 0


def test_broken_batchllm_is_recorded_not_a_crash(tmp_path, fake_cli, tiny_model, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    rc, data, md = run_main(tmp_path, fake_cli, tiny_model, "--only", "no-sharing")
    assert rc == 3
    assert [r["error"] for r in data["runs"]] and all("exit 1" in r["error"] for r in data["runs"])
    assert "error: exit 1" in md



def test_eager_engine_runs_with_compile_off_and_the_ratio_is_reported(tmp_path, fake_cli, tiny_model, monkeypatch):
    monkeypatch.setattr(machine, "matmul_peak_gflops", lambda dtype: 100.0)
    rc, data, md = run_main(tmp_path, fake_cli, tiny_model, "--only", "paper", "--peers", "batchllm,batchllm-eager")
    assert rc == 0
    argv = {r["peer"]: json.loads(Path(r["out_path"]).with_suffix(".metrics.json").read_text())["argv"]
            for r in data["runs"]}
    assert argv["batchllm-eager"][-2:] == ["--compile", "off"] and "--compile" not in argv["batchllm"]
    assert data["fused_vs_eager"] == [{"workload": "paper", "fused_gen_s": 1.25, "eager_gen_s": 2.25,
                                       "speedup": 2.25 / 1.25}]
    assert "\n| batchllm-eager | 1 | " in md and "fused speed-up **1.80x** (fused >= eager)" in md


def test_a_run_on_another_family_adds_its_section_beside_the_committed_one(tmp_path, fake_cli, tiny_model, monkeypatch):
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS.split()))
    monkeypatch.setattr(machine, "matmul_peak_gflops", lambda dtype: 100.0)
    committed = (Path(__file__).parents[1] / "RESULTS.md").read_text()
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "RESULTS.md").write_text(committed)
    rc, data, md = run_main(tmp_path, fake_cli, tiny_model, "--only", "paper")
    assert rc == 0
    zen, amx = "x86 with AVX512-BF16 (no AMX)", "x86 with AMX-BF16"
    assert list(sections(md)) == [zen, amx]
    assert sections(md)[zen] == sections(committed)[zen] and split(md)[1] == split(committed)[1]
    heading = f"# Results on {amx} — {machine.cpu_model()}, measured {data['started'][:10]}\n"
    assert sections(md)[amx].startswith(heading)
    assert f"({amx}: amx_tile yes, amx_bf16 yes, avx512_bf16 yes, avx512f yes)" in sections(md)[amx]


def test_pooled_workloads_report_in_the_family_section_and_results_json(tmp_path, fake_cli, tiny_model, monkeypatch):
    monkeypatch.setattr(machine, "matmul_peak_gflops", lambda dtype: 100.0)
    rc, data, md = run_main(tmp_path, fake_cli, tiny_model, "--only", "embeddings,rerank")
    assert rc == 0
    argv = {r["variant"]: json.loads(Path(r["out_path"]).with_suffix(".metrics.json").read_text())["argv"]
            for r in data["runs"] if r["workload"] == "rerank"}
    assert argv["sharing-off"][-2:] == ["--sharing", "off"] and "--sharing" not in argv[""]
    ratios = {r["workload"]: r for r in data["pooled_ratios"]}
    # the fake's relevances agree exactly; its embeddings were never checked against transformers (not run)
    assert ratios["rerank"]["ratio"] == 1.0 and ratios["rerank"]["agreement"] == 0.0
    assert ratios["embeddings"]["ratio"] is None and "unchecked" in ratios["embeddings"]["withheld"]
    (body,) = sections(md).values()
    assert "## embeddings" in body and "## rerank" in body and "rates withheld: unchecked" in body
    assert "| batchllm --sharing off | 1 | " in body and "| 1.00x / " in body  # with start-up: process walls vary


def test_an_unknown_bench_name_is_a_usage_error_before_any_measuring(capsys):
    from benchmarks.__main__ import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--only", "paper,bogus"])
    assert exit_info.value.code == 2 and "unknown ['bogus']; choose from paper" in capsys.readouterr().err
