import json

import pytest

from benchmarks.flops import ModelSize, mfu, model_size
from benchmarks.peers.base import RunOutcome
from benchmarks.rows import same_outputs, summarise


def test_model_size_reads_safetensors_headers(tiny_model):
    size = model_size(tiny_model)
    assert size == ModelSize(body=8 + 2 * (64 + 128), head=50 * 8, attention=4 * 2 * 2 * 4)


def test_flops_and_mfu_follow_the_stated_formula():
    size = ModelSize(body=100, head=10)
    assert size.flops(computed_prompt_tokens=7, output_tokens=3) == 2 * 100 * 10 + 2 * 10 * 3
    assert mfu(size, 7, 3, seconds=2.0, peak_gflops=1e-9) == pytest.approx(size.flops(7, 3) / 2.0)
    with pytest.raises(ValueError, match="0.0"):
        mfu(size, 7, 3, seconds=0.0, peak_gflops=1.0)


def run(peer, gen, **kw):
    base = {"peer": peer, "workload": "w", "variant": "", "total_s": gen + 1, "gen_s": gen, "prompt_tokens": 1000,
            "completion_tokens": 100, "cached_tokens": 999, "computed_prompt_tokens": 600, "peak_rss_mib": 50.0}
    return RunOutcome(**(base | kw))


def test_summary_takes_medians_and_keeps_errors():
    size = ModelSize(body=1000, head=10)
    runs = [run("batchllm", 2.0), run("batchllm", 10.0, others_share=0.2), run("batchllm", 4.0),
            run("vllm", 8.0), RunOutcome(peer="transformers", workload="w", variant="", error="boom")]
    rows = {r.peer: r for r in summarise(runs, size, peak_gflops=1.0)}
    b = rows["batchllm"]
    assert (b.runs, b.gen_s, b.total_s) == (3, 4.0, 5.0)
    assert b.prompt_tps == 250.0 and b.output_tps == 25.0 and b.saving_ratio == 0.4
    assert b.others_share == 0.2
    assert b.mfu == pytest.approx(size.flops(600, 100) / 4.0 / 1e9)
    assert rows["transformers"].runs == 0 and rows["transformers"].error == "boom"


def test_constrained_vllm_is_reported_as_vllm():
    rows = summarise([run("vllm-kv512", 1.0)], ModelSize(1, 1), 1.0)
    assert [r.peer for r in rows] == ["vllm"]


def test_same_outputs_compares_token_ids_else_text(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_text("\n".join(json.dumps(x) for x in [{"id": "1", "text": "hi", "token_ids": [1]}, {"id": "2", "text": "yo"}]))
    b.write_text("\n".join(json.dumps(x) for x in [{"id": "1", "text": "HI", "token_ids": [1]}, {"id": "2", "text": "no"}]))
    c.write_text("")
    assert same_outputs(str(a), str(b)) == 0.5
    assert same_outputs(str(a), str(c)) is None
    assert same_outputs(str(a), str(tmp_path / "missing")) is None


def test_attention_pairs_count_each_shared_prefix_once():
    import numpy as np

    from benchmarks.flops import attention_pairs

    a, b = np.array([5, 6, 7, 8]), np.array([5, 6, 9])  # share the prefix [5, 6]
    # distinct prefixes: [5] 1 key, [5,6] 2, [5,6,7] 3, [5,6,7,8] 4, [5,6,9] 3; outputs: a 2 tokens (5, 6 keys),
    # b 1 token (4 keys)
    assert attention_pairs([a, b], [2, 1]) == (1 + 2 + 3 + 4 + 3) + (5 + 6) + 4
    assert attention_pairs([a, a.copy()], [0, 0]) == 1 + 2 + 3 + 4  # a duplicate prompt costs nothing more


