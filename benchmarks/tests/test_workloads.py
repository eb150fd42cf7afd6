import json

import numpy as np

from benchmarks.workloads import SWEEP_DEGREES, Bench, ablation_bench, benches, build, decode_heavy


def test_decode_heavy_output_length_follows_the_prefix_group():
    w = decode_heavy(groups=4, prefix_len=16, degree=3, suffix_len=4, outputs=(8, 256), seed=1)
    prompts = [tuple(w.tokens[i][:16]) for i in range(len(w.tokens))]
    by_prefix: dict[tuple, set] = {}
    for p, m in zip(prompts, w.max_tokens):
        by_prefix.setdefault(p, set()).add(int(m))
    assert len(by_prefix) == 4 and all(len(s) == 1 for s in by_prefix.values())
    assert sorted(next(iter(s)) for s in by_prefix.values()) == [8, 8, 256, 256]
    assert [len(w.tokens[i]) for i in range(12)] == [20] * 12
    groups_in_order = [prompts.index(p) for p in prompts]
    assert groups_in_order != sorted(groups_in_order), "rows should be shuffled, not group-major"


def test_decode_heavy_is_deterministic():
    a = decode_heavy(3, 8, 2, 4, (1, 5), seed=3)
    b = decode_heavy(3, 8, 2, 4, (1, 5), seed=3)
    assert np.array_equal(a.tokens.flat, b.tokens.flat) and np.array_equal(a.max_tokens, b.max_tokens)


def test_every_issue_workload_is_there_in_both_sizes():
    for quick in (True, False):
        names = [b.name for b in benches(quick)]
        assert len(names) == len(set(names))
        assert {"paper", "multi-level", "no-sharing", "decode-heavy", "kv-constrained"} <= set(names)
        assert {f"sharing-{d}" for d in SWEEP_DEGREES} <= set(names)
        assert "transformers" in next(b for b in benches(quick) if b.name == "paper").peers


def test_sharing_sweep_keeps_the_total_size(tmp_path):
    sizes = {build(b, tmp_path).prompt_tokens for b in benches(True) if b.name.startswith("sharing-")}
    assert len(sizes) == 1


def test_build_writes_the_jsonl_contract_and_kv_budget(tmp_path):
    bench = next(b for b in benches(True) if b.name == "kv-constrained")
    built = build(bench, tmp_path)
    rows = [json.loads(line) for line in built.path.read_text().splitlines()]
    assert len(rows) == built.requests and set(rows[0]) == {"id", "prompt_token_ids", "max_tokens"}
    assert sum(len(r["prompt_token_ids"]) for r in rows) == built.prompt_tokens
    assert built.kv_budget_tokens < built.working_set_tokens
    assert built.kv_budget_tokens >= built.max_prompt + built.max_tokens


def test_unconstrained_bench_has_no_budget(tmp_path):
    assert build(ablation_bench(True), tmp_path).kv_budget_tokens is None


def test_bad_kv_fraction_is_refused():
    import pytest

    with pytest.raises(ValueError, match="1.5"):
        Bench("x", "x", lambda: None, kv_fraction=1.5)
