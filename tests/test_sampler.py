"""Sampler: greedy is argmax, cuts keep only allowed tokens, seeds make samples batch-invariant."""

from __future__ import annotations

import torch

from batchcli.engine.sampler import Sampler
from batchcli.params import SamplingParams

V = 50


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed))


def test_greedy_is_argmax():
    logits = _logits(4)
    out = Sampler(0).sample(logits, [SamplingParams()] * 4, [0, 1, 2, 3], [0] * 4)
    assert out == logits.argmax(-1).tolist()


def test_top_k_and_top_p_limit_the_support():
    logits = _logits(1)[0]
    top3 = set(torch.topk(logits, 3).indices.tolist())
    probs = logits.softmax(-1)
    sampler = Sampler(0)
    draws_k = {sampler.sample(logits[None], [SamplingParams(temperature=1.0, top_k=3)], [i], [0])[0] for i in range(200)}
    assert draws_k <= top3 and len(draws_k) > 1
    order = probs.argsort(descending=True)
    nucleus = set(order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist())
    draws_p = {sampler.sample(logits[None], [SamplingParams(temperature=1.0, top_p=0.5)], [1000 + i], [0])[0] for i in range(200)}
    assert draws_p <= nucleus
    assert sampler.sample(logits[None], [SamplingParams(temperature=1.0, top_k=1)], [5000], [0]) == [int(logits.argmax())]


def test_seeded_samples_do_not_depend_on_the_batch():
    row = _logits(1, seed=3)
    p = SamplingParams(temperature=0.9, seed=42)
    alone = Sampler(1)
    crowd = Sampler(2)
    others = _logits(5, seed=4)
    got_alone, got_crowd = [], []
    for _ in range(20):
        got_alone.append(alone.sample(row, [p], [7], [0])[0])
        batch = torch.cat([others[:2], row, others[2:]])
        params = [SamplingParams(temperature=1.0, seed=i) for i in range(2)] + [p] + [SamplingParams()] * 3
        got_crowd.append(crowd.sample(batch, params, [0, 1, 99, 3, 4, 5], [0] * 6)[2])
    assert got_alone == got_crowd
    assert len(set(got_alone)) > 1  # it really sampled
    other_sample = Sampler(1)
    assert [other_sample.sample(row, [p], [7], [1])[0] for _ in range(20)] != got_alone  # sample index matters
