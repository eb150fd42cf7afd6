"""The engine with the sampling features on a tiny model: log-probs equal transformers' fp32 log-softmax,
biases and penalties reach the tokens, seeded penalised sampling is batch-invariant, and a request
whose distribution is not finite fails alone."""

from __future__ import annotations

import pytest
import torch

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine
from batchcli.params import SamplingParams
from batchcli.results import Result
from helpers_models import save_tiny_checkpoint
from test_engine import EOS, make_job, run_records, shared_prompts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    model = save_tiny_checkpoint(directory, "llama", seed=5, eos_token_id=EOS)
    return directory, model


def run(directory, prompts, params, sharing: str = "multi") -> dict[str, Result]:
    engine = Engine(directory, EngineConfig(dtype="float32", attention="torch"), decode=lambda ids: "")
    got: dict[str, Result] = {}
    run_records(engine, make_job(prompts, params, sharing), lambda r: got.__setitem__(r.request.id, r))
    return got


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_match_transformers_log_softmax(tiny, temperature):
    directory, model = tiny
    prompts = shared_prompts()[:6]
    params = [SamplingParams(max_tokens=5, temperature=temperature, seed=i, logprobs=3, ignore_eos=True)
              for i in range(len(prompts))]
    got = run(directory, prompts, params)
    for i, prompt in enumerate(prompts):
        completion = got[f"r{i}"].completions[0]
        assert len(completion.logprobs) == len(completion.token_ids) == 5
        for step, entry in enumerate(completion.logprobs):
            ids = torch.tensor([prompt + list(completion.token_ids[:step])])
            with torch.no_grad():
                logits = model(ids).logits[0, -1].float()
            expected = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
            assert entry.token == completion.token_ids[step]
            assert entry.logprob == pytest.approx(float(expected[entry.token]), abs=1e-4)
            values, order = expected.topk(3)
            assert [t for t, _ in entry.top] == order.tolist()
            assert [lp for _, lp in entry.top] == pytest.approx(values.tolist(), abs=1e-4)


def _reference_greedy(model, prompt: list[int], steps: int, p: SamplingParams) -> tuple[int, ...]:
    """transformers' logits, then bias and OpenAI's penalties written out by hand, then argmax."""
    generated: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0, -1].float().clone()
        for token, bias in p.logit_bias:
            logits[token] += bias
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.shape[0]).float()
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        generated.append(int(logits.argmax()))
    return tuple(generated)


def test_logit_bias_and_penalties_reach_the_output(tiny):
    directory, model = tiny
    prompts = shared_prompts()[:4]
    params = [SamplingParams(max_tokens=6, logit_bias=((7, 100.0),), ignore_eos=True),
              SamplingParams(max_tokens=10, presence_penalty=1.0, frequency_penalty=1.5,
                             logit_bias=((7, 5.0), (9, 4.0)), ignore_eos=True),
              SamplingParams(max_tokens=10, presence_penalty=-0.5, frequency_penalty=0.7, ignore_eos=True),
              SamplingParams(max_tokens=4, min_tokens=4, logit_bias=((EOS, 100.0),))]
    got = run(directory, prompts, params)
    assert got["r0"].completions[0].token_ids == (7,) * 6
    for i in (1, 2):
        expected = _reference_greedy(model, prompts[i], 10, params[i])
        assert got[f"r{i}"].completions[0].token_ids == expected
    assert len(set(got["r1"].completions[0].token_ids)) > 2  # the penalties changed something
    # EOS is the favourite, but cannot come before min_tokens: the 4 tokens are all something else
    assert EOS not in got["r3"].completions[0].token_ids[:3] and got["r3"].completions[0].finish_reason == "length"


def test_seeded_penalised_sampling_is_batch_invariant(tiny):
    directory, _ = tiny
    prompts = shared_prompts()
    params = [SamplingParams(max_tokens=8, temperature=1.0, seed=i, repetition_penalty=1.4, presence_penalty=0.5,
                             frequency_penalty=0.5, min_p=0.02, logprobs=1) for i in range(len(prompts))]
    together = run(directory, prompts, params)["r4"].completions[0]
    alone = run(directory, [prompts[4]], [params[4]])["r0"].completions[0]
    assert alone.token_ids == together.token_ids
    # the model's own fp32 logits differ in the last bits with the batch's shape; the sampling does not
    assert [e.logprob for e in alone.logprobs] == pytest.approx([e.logprob for e in together.logprobs], abs=1e-5)
