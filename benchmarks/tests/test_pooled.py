"""The pooled-job workloads, their runs in a pass, and how the report checks and compares them."""

from __future__ import annotations

import numpy as np
import orjson

from benchmarks.pooled import (EMBED_LINE, SHARING_OFF, PooledBuilt, agreement, build_pooled, corpus_prompts,
                               embed_corpus, pooled_benches, read_vectors, rerank_lines)
from benchmarks.pooled_report import pooled_ratios, pooled_table
from benchmarks.rows import Row
from benchmarks.runner import plan_pass
from benchmarks.tests.test_runner import settings
from benchmarks.workloads import PEER_CHOICES


def test_the_embedding_corpus_shares_exactly_its_instruction():
    corpus = embed_corpus(50, 64, seed=3)
    assert corpus == embed_corpus(50, 64, seed=3)
    assert all(p[:64] == corpus[0][:64] and 16 <= len(p) - 64 <= 48 for p in corpus)
    assert len({p[64] for p in corpus}) > 40  # the distinct texts do differ right after the instruction


def test_rerank_lines_are_one_query_over_its_documents():
    lines = rerank_lines(3, 5, 20)
    assert lines == rerank_lines(3, 5, 20) and [x["url"] for x in lines] == ["/v1/rerank"] * 3
    assert all(len(x["body"]["documents"]) == 5 and len(x["body"]["documents"][0].split()) == 20 for x in lines)


def test_built_embeddings_read_back_in_corpus_order(tmp_path):
    bench = next(b for b in pooled_benches(True) if b.name == "embeddings")
    built = build_pooled(bench, tmp_path)
    corpus = embed_corpus(128, 64)
    assert built.lines == 2 and corpus_prompts(built.path, 70) == corpus[:70]
    # an engine's output lines, vectors = (corpus index, 1, 0...), read back in corpus order
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(orjson.dumps({"id": f"e{j}", "embeddings": [[j * EMBED_LINE + k, 1.0, 0.0]
                                                                           for k in range(EMBED_LINE)]}) + b"\n"
                             for j in (1, 0)))
    assert read_vectors(str(out))[:, 0].tolist() == list(range(128))


def test_agreement_is_the_worst_cosine_or_the_largest_score_gap(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    np.save(b, np.array([[1.0, 0.0], [1.0, 1.0]], np.float32))
    assert abs(agreement("embeddings", str(a), str(b)) - 2 ** -0.5) < 1e-6

    def rerank(path, scores):
        path.write_bytes(orjson.dumps({"custom_id": "q0", "response": {"body": {"results": [
            {"index": i, "relevance_score": s} for i, s in enumerate(scores)]}}}) + b"\n")
        return str(path)

    assert abs(agreement("rerank", rerank(tmp_path / "x", [0.5, 0.25]), rerank(tmp_path / "y", [0.5, 0.5])) - 0.25) < 1e-9


def test_a_pass_runs_batchllm_with_and_without_sharing_and_transformers_once(tmp_path):
    s = settings(tmp_path, peers=PEER_CHOICES)
    built = [build_pooled(b, tmp_path) for b in pooled_benches(True)]
    first, second = plan_pass(s, built, 0), plan_pass(s, built, 1)
    emb = [(name, v[0]) for b, name, v in first if b.bench.name == "embeddings"]
    assert sorted(emb) == [("batchllm", ""), ("batchllm", SHARING_OFF[0]), ("transformers-embed", "")]
    assert sorted((name, v[0]) for b, name, v in second if b.bench.name == "embeddings") == \
        [("batchllm", ""), ("batchllm", SHARING_OFF[0])], "transformers-embed runs in pass 0 only"
    assert [(name, v[0]) for b, name, v in first if b.bench.name == "rerank"] != \
        [(name, v[0]) for b, name, v in second if b.bench.name == "rerank"], "the order rotates"
    assert all(isinstance(b, PooledBuilt) and b.max_tokens == 1 for b, _, _ in first)


EMBEDDINGS, RERANK = pooled_benches(True)


def row(peer, variant, gen, tokens, agree=None, workload="embeddings"):
    return Row(workload, peer, variant, 1, None, total_s=gen + 3, gen_s=gen, prompt_tokens=tokens,
               prompt_tps=tokens / gen, agreement=agree)


def test_speed_ups_with_and_without_start_up_are_shown_where_the_outputs_agree():
    # transformers-embed embeds a prefix (3,000 of 9,000 tokens): no speed-up with start-up against it
    rows = [row("batchllm", "", 1.0, 9000), row("batchllm", "sharing-off", 3.0, 9000, 0.9999),
            row("transformers-embed", "", 2.0, 3000, 0.99)]
    ratios = {r.other: (r.ratio, r.ratio_with_startup, r.withheld) for r in pooled_ratios(EMBEDDINGS, rows, "bfloat16")}
    assert ratios == {"--sharing off": (3.0, 6.0 / 4.0, None), "transformers-embed": (6.0, None, None)}
    table = "\n".join(pooled_table(EMBEDDINGS, rows, "bfloat16"))
    assert "| batchllm | 1 | 4.0 | 1.0 | 2250 | 9000 | – |" in table
    assert "| batchllm --sharing off | 1 | 6.0 | 3.0 | 1500 | 3000 | 3.00x / 1.50x |" in table
    assert "| transformers-embed | 1 | 5.0 | 2.0 | 600 | 1500 | 6.00x / – |" in table


def test_a_speed_up_is_not_shown_where_an_engine_disagrees_with_batchllm():
    rows = [row("batchllm", "", 1.0, 9000, workload="rerank"), row("batchllm", "sharing-off", 3.0, 9000, 0.3, "rerank")]
    (ratio,) = pooled_ratios(RERANK, rows, "bfloat16")
    assert ratio.ratio is None and ratio.ratio_with_startup is None and "disagree" in ratio.withheld
    assert "| batchllm --sharing off | 1 | 6.0 | 3.0 | 1500 | 3000 | not shown: outputs disagree" in \
        "\n".join(pooled_table(RERANK, rows, "bfloat16"))


def test_batchllm_rates_are_withheld_unless_its_embeddings_agree_with_transformers():
    on, off = row("batchllm", "", 1.0, 9000), row("batchllm", "sharing-off", 3.0, 9000, 0.9999)
    for reference, why in ((row("transformers-embed", "", 2.0, 3000, 0.5), "disagree with transformers-embed's"),
                           (None, "unchecked: no transformers-embed output")):
        rows = [on, off] + ([reference] if reference else [])
        assert all(r.ratio is None and why in r.withheld for r in pooled_ratios(EMBEDDINGS, rows, "bfloat16"))
        table = "\n".join(pooled_table(EMBEDDINGS, rows, "bfloat16"))
        assert "9000" not in table and "3000 |" not in table, "no batchllm rate is written"
        assert table.count("| 1 | rates withheld: ") == 2 and why in table
