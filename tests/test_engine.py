"""The engine end to end: greedy output is token-identical to transformers' `generate` on the same
weights (float32), whatever the sharing mode, chunking or KV pressure; seeded sampling does not
depend on the batch.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine, RunStats
from batchcli.results import resolve
from batchcli.pipeline import PreparedJob, plan_for
from batchcli.planning.plan import PlanSettings
from batchcli.requests import InputFormat, Request
from batchcli.params import SamplingParams
from batchcli.planning.tokenize import TokenizedRequests
from batchcli.planning.token_arrays import TokenArrays
from helpers_models import save_tiny_checkpoint

EOS = 2


class _Never:
    requested = False


def shared_prompts(seed: int = 0, systems: tuple[int, ...] = (9, 13), docs: tuple[int, ...] = (11, 6),
                   question: int = 7, solo: int = 30) -> list[list[int]]:
    """Two system prompts -> documents -> questions (three levels), plus unshared and duplicate prompts;
    the lengths are the system prompts', the documents', and the longest question and unshared prompt."""
    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(3, 128) for _ in range(n)]  # noqa: E731 - never EOS in prompts
    prompts = []
    for system in [tok(n) for n in systems]:
        for doc in [tok(n) for n in docs]:
            prompts += [system + doc + tok(rng.randrange(1, question)) for _ in range(3)]
    prompts += [tok(rng.randrange(2, solo)) for _ in range(3)]
    prompts.append(list(prompts[0]))  # an exact duplicate
    rng.shuffle(prompts)
    return prompts


def make_job(prompts: list[list[int]], params: list[SamplingParams], sharing: str, block_size: int = 4) -> PreparedJob:
    requests = [Request(id=f"r{i}", line=i + 1, format=InputFormat.TOKENS, params=p, prompt_token_ids=())
                for i, p in enumerate(params)]
    batch = TokenizedRequests(requests, TokenArrays.from_lists(prompts), [])
    plan = plan_for(batch, PlanSettings(block_size=block_size, sharing=sharing), "tiny", "fp")
    return PreparedJob(model_dir=None, tokenizer=None, tokenized=batch, plan=plan, skipped=0)


def run_engine(model_dir, job: PreparedJob, stats: list | None = None, cache=None,
               **config) -> dict[str, list[tuple[int, ...]]]:
    engine = Engine(model_dir, EngineConfig(**{"dtype": "float32", "attention": "torch", **config}),
                    decode=lambda ids: "", native_cache=cache, work_tokens=job.shard().work_tokens,
                    block_size=job.plan.settings.block_size)
    got: dict[str, list[tuple[int, ...]]] = {}
    run = run_records(engine, job, lambda r: got.__setitem__(r.request.id, [c.token_ids for c in r.completions]))
    if stats is not None:
        stats.append(run)
    return got


def run_records(engine: Engine, job: PreparedJob, on_record, **kwargs) -> RunStats:
    """`engine.run` over the whole job, each event handed to `on_record` as the front half's Result/Failure."""
    return engine.run(job.shard(), lambda e: on_record(resolve(e, job.tokenized.requests)), lambda p: None, _Never(),
                      grammars=job.grammars, **kwargs)


def hf_greedy(model, prompt: list[int], max_new: int) -> tuple[int, ...]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, eos_token_id=EOS,
                             pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return tuple(out[0, len(prompt):].tolist())


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def tiny(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = save_tiny_checkpoint(directory, request.param, seed=11, eos_token_id=EOS)
    prompts = shared_prompts()
    max_new = [4 + (i % 5) for i in range(len(prompts))]
    expected = {f"r{i}": hf_greedy(model, p, m) for i, (p, m) in enumerate(zip(prompts, max_new))}
    return directory, prompts, max_new, expected


@pytest.mark.parametrize("sharing", ["multi", "single", "off"])
def test_greedy_matches_transformers(tiny, sharing):
    directory, prompts, max_new, expected = tiny
    job = make_job(prompts, [SamplingParams(max_tokens=m) for m in max_new], sharing)
    if sharing != "off":
        assert job.plan.stats.saving_ratio > 0.2 and job.plan.stats.max_depth >= 2 - (sharing == "single")
    got = run_engine(directory, job)
    assert {k: v[0] for k, v in got.items()} == expected


@pytest.mark.parametrize("sharing", ["multi", "single", "off"])
@pytest.mark.parametrize("config", [dict(token_budget=5), dict(kv_budget="48tok", token_budget=16, max_running=8)],
                         ids=["chunked-prefill", "preemption"])
def test_greedy_matches_transformers_under_pressure(tiny, config, sharing):
    directory, prompts, max_new, expected = tiny
    job = make_job(prompts, [SamplingParams(max_tokens=m) for m in max_new], sharing)
    stats: list = []
    got = run_engine(directory, job, stats, **config)
    assert {k: v[0] for k, v in got.items()} == expected
    if "kv_budget" in config:
        assert stats[0].preemptions > 0, "the KV budget was meant to force preemption"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sharing", ["multi", "off"])
@pytest.mark.parametrize("config", [{}, dict(token_budget=5), dict(kv_budget="48tok", token_budget=16, max_running=8)],
                         ids=["plain", "chunked-prefill", "preemption"])
def test_greedy_on_cuda_matches_transformers(tiny, config, sharing):
    """The engine on the GPU, attention through the Triton kernel, against transformers on the CPU."""
    directory, prompts, max_new, expected = tiny
    job = make_job(prompts, [SamplingParams(max_tokens=m) for m in max_new], sharing)
    stats: list = []
    got = run_engine(directory, job, stats, device="cuda", attention="triton", **config)
    assert {k: v[0] for k, v in got.items()} == expected
    assert (stats[0].device, stats[0].attention) == ("cuda", "triton")
    if "kv_budget" in config:
        assert stats[0].preemptions > 0, "the KV budget was meant to force preemption"


def test_batch_invariance_and_seeded_sampling(tiny):
    directory, prompts, max_new, _ = tiny
    params = [SamplingParams(max_tokens=6, temperature=1.0, seed=i, n=2) for i in range(len(prompts))]
    together = run_engine(directory, make_job(prompts, params, "multi"))
    alone = run_engine(directory, make_job([prompts[3]], [params[3]], "multi"))
    assert alone["r0"] == together["r3"]
    assert len({tuple(v) for v in together.values()}) > 1 and together["r3"][0] != together["r3"][1]


@pytest.mark.slow
def test_default_model_matches_transformers(smol_dir, smol_tokenizer):
    from transformers import LlamaForCausalLM

    from batchcli.planning.tokenize import tokenize_requests

    system = "You are a helpful assistant who answers questions about the solar system in one sentence. "
    greedy = SamplingParams(max_tokens=10)
    items = [Request(id=f"p{i}", line=i, format=InputFormat.SIMPLE, params=greedy, prompt=system + q)
             for i, q in enumerate(["Which planet is largest?", "Which planet has rings?", "How far is Mars?"])]
    items += [Request(id=f"c{i}", line=10 + i, format=InputFormat.CHAT, params=greedy,
                      messages=({"role": "system", "content": system}, {"role": "user", "content": q}))
              for i, q in enumerate(["What is the Sun?", "Name a moon of Jupiter."])]
    items.append(Request(id="solo", line=20, format=InputFormat.SIMPLE, params=greedy, prompt="Once upon a time"))
    batch = tokenize_requests(items, smol_tokenizer)
    plan = plan_for(batch, PlanSettings(block_size=16, sharing="multi"), "smol", "fp")
    assert plan.stats.saving_ratio > 0.2
    job = PreparedJob(model_dir=smol_dir, tokenizer=smol_tokenizer, tokenized=batch, plan=plan, skipped=0)
    got = run_engine(smol_dir, job)
    hf = LlamaForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    for i, r in enumerate(batch.requests):
        prompt = batch.tokens[i].tolist()
        assert got[r.id][0] == hf_greedy(hf, prompt, 10), r.id
