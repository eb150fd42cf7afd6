"""Logits processors and the Decoder: each penalty and bias against a hand-computed expectation, min_p,
batch invariance with every feature on, and a non-finite row failing alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batchcli.engine.decoding import Decoder
from batchcli.engine.logits_processors import Row, process_
from batchcli.engine.sampler import Sampler
from batchcli.params import SamplingParams

EOS = (2,)
NO_PROMPT = np.zeros(0, dtype=np.int32)


def _row(params: SamplingParams, generated=(), prompt=NO_PROMPT) -> Row:
    return Row(params, list(generated), np.asarray(prompt, dtype=np.int32))


def test_logit_bias_is_added_to_the_listed_tokens_only():
    logits = torch.tensor([[0.5, 1.0, -1.0, 2.0, 0.0], [0.5, 1.0, -1.0, 2.0, 0.0]])
    process_(logits, [_row(SamplingParams(logit_bias=((1, 2.5), (3, -100.0)))), _row(SamplingParams())], EOS)
    assert logits[0].tolist() == [0.5, 3.5, -1.0, -98.0, 0.0]
    assert logits[1].tolist() == [0.5, 1.0, -1.0, 2.0, 0.0]


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    params = SamplingParams(min_tokens=3, stop_token_ids=(4,))
    logits = torch.zeros(2, 6)
    process_(logits, [_row(params, [1, 1]), _row(params, [1, 1, 1])], EOS)
    assert logits[0].tolist() == [0, 0, float("-inf"), 0, float("-inf"), 0]
    assert logits[1].tolist() == [0.0] * 6  # three generated: EOS and stops allowed again


def test_presence_and_frequency_penalties_follow_openai():
    # OpenAI: mu[j] - c[j] * frequency - (c[j] > 0) * presence, counts over the generated tokens only
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    process_(logits, [_row(params, [1, 1, 1, 3], prompt=[0, 0])], EOS)
    assert logits[0].tolist() == [1.0, 1.0 - 3 * 0.25 - 0.5, 1.0, 1.0 - 0.25 - 0.5]


def test_negative_penalties_encourage_repeats():
    logits = torch.zeros(1, 3)
    process_(logits, [_row(SamplingParams(presence_penalty=-1.0, frequency_penalty=-2.0), [2, 2])], EOS)
    assert logits[0].tolist() == [0.0, 0.0, 5.0]


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -0.5]])
    prompt, generated = [0, 1], [1, 4]
    ours = logits.clone()
    process_(ours, [_row(SamplingParams(repetition_penalty=1.5), generated, prompt)], EOS)
    # by hand: seen {0, 1, 4}; positive / 1.5, negative * 1.5
    assert ours[0].tolist() == pytest.approx([2.0 / 1.5, -1.5, 0.5, 3.0, -0.75])
    theirs = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([prompt + generated]), logits.clone())
    assert torch.equal(ours, theirs)


def test_min_p_keeps_tokens_above_the_fraction_of_the_top_probability():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.04, 0.01])
    logits = probs.log()[None]
    sampler = Sampler(0)
    p = SamplingParams(temperature=1.0, min_p=0.2)  # keeps p >= 0.1: tokens 0, 1, 2
    draws = {sampler.sample(logits, [p], [i], [0])[0] for i in range(300)}
    assert draws == {0, 1, 2}


def _fake_model(generated: list[int], vocab: int = 40) -> torch.Tensor:
    """Logits that depend only on the sequence so far (like a model would)."""
    seed = 1 + sum((i + 1) * t for i, t in enumerate(generated))
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed))


def _decode_steps(decoder: Decoder, params: list[SamplingParams], seq_ids: list[int], steps: int) -> list[list[int]]:
    generated: list[list[int]] = [[] for _ in params]
    prompts = [np.array([3, 4, 5], dtype=np.int32)] * len(params)
    for _ in range(steps):
        logits = torch.stack([_fake_model(g) for g in generated])
        draws = decoder.sample(logits, params, seq_ids, [0] * len(params), generated, prompts)
        for g, d in zip(generated, draws):
            g.append(d.token)
    return generated


def test_every_feature_is_batch_invariant_when_seeded():
    target = SamplingParams(temperature=0.8, seed=7, top_p=0.9, min_p=0.05, presence_penalty=0.7,
                            frequency_penalty=0.3, repetition_penalty=1.3, logit_bias=((5, 3.0),), logprobs=2)
    others = [SamplingParams(temperature=1.2, seed=1, frequency_penalty=-1.0, logit_bias=((5, -50.0),)),
              SamplingParams(min_tokens=5, logprobs=4), SamplingParams(temperature=0.5, top_k=3, seed=9)]
    alone = _decode_steps(Decoder(Sampler(1), None, frozenset(EOS)), [target], [11], 25)[0]
    crowd = _decode_steps(Decoder(Sampler(2), None, frozenset(EOS)), [others[0], target, *others[1:]], [0, 11, 2, 3], 25)
    assert crowd[1] == alone
    assert len(set(alone)) > 3  # it really sampled


def test_a_non_finite_row_fails_alone():
    decoder = Decoder(Sampler(0), None, frozenset(EOS))
    logits = torch.randn(3, 10)
    logits[1, 4] = float("nan")
    params = [SamplingParams(), SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=1.0, seed=2)]
    draws = decoder.sample(logits, params, [0, 1, 2], [0, 0, 0], [[], [], []], [NO_PROMPT] * 3)
    assert draws[0].token == int(logits[0].argmax()) and draws[2].token is not None
    assert draws[1].token is None and "not finite" in draws[1].failure
    everything_banned = torch.full((1, 10), float("-inf"))
    assert decoder.sample(everything_banned, params[:1], [5], [0], [[]], [NO_PROMPT])[0].token is None
