"""The pooled-job workloads: deterministic, one shared instruction, the sizes they say."""

from __future__ import annotations

from benchmarks.pooling_bench import embed_corpus, rerank_lines


def test_the_embedding_corpus_shares_exactly_its_instruction():
    corpus = embed_corpus(50, 64, seed=3)
    assert corpus == embed_corpus(50, 64, seed=3)
    assert all(p[:64] == corpus[0][:64] and 16 <= len(p) - 64 <= 48 for p in corpus)
    assert len({p[64] for p in corpus}) > 40  # the distinct texts do differ right after the instruction


def test_rerank_lines_are_one_query_over_its_documents():
    lines = rerank_lines(3, 5, 20)
    assert lines == rerank_lines(3, 5, 20) and [x["url"] for x in lines] == ["/v1/rerank"] * 3
    assert all(len(x["body"]["documents"]) == 5 and len(x["body"]["documents"][0].split()) == 20 for x in lines)
