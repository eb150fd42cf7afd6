"""Pooled requests in the engine: float32 embeddings (last-token and mean pooling, truncated and
normalised) and yes/no logits equal a plain transformers forward with the same pooling on the same
weights, whatever the sharing, the chunking, the KV pressure, and generation requests mixed in.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine
from batchcli.pipeline import PreparedJob, plan_for
from batchcli.planning.plan import PlanSettings
from batchcli.engine.events import Pooled
from batchcli.planning.token_arrays import TokenArrays
from batchcli.planning.tokenize import TokenizedRequests
from batchcli.pooling_params import PoolingParams
from batchcli.params import SamplingParams
from batchcli.requests import InputFormat, Request
from batchcli.results import PooledResult, Result
from helpers_models import save_tiny_checkpoint
from test_engine import EOS, hf_greedy, run_records

ONE = SamplingParams(max_tokens=1)
YES_NO = (7, 9)  # any two token ids of the tiny vocabulary


def instruction_prompts(seed: int = 0) -> list[list[int]]:
    """One instruction of 13 tokens before 8 queries, two of them sharing a further 6 tokens, a
    duplicate (an entirely shared prompt), and two prompts that share nothing."""
    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(3, 128) for _ in range(n)]  # noqa: E731
    instruction, topic = tok(13), tok(6)
    prompts = [instruction + tok(rng.randrange(1, 9)) for _ in range(6)]
    prompts += [instruction + topic + tok(rng.randrange(1, 4)) for _ in range(2)]
    prompts += [list(prompts[2]), tok(5), tok(1)]
    rng.shuffle(prompts)
    return prompts


def make_pooled_job(prompts: list[list[int]], tasks: list[PoolingParams | None], sharing: str,
                    max_new: int = 4, block_size: int = 4) -> PreparedJob:
    requests = [Request(id=f"r{i}", line=i + 1, format=InputFormat.TOKENS, prompt_token_ids=(),
                        params=ONE if t is not None else SamplingParams(max_tokens=max_new), pooling=t)
                for i, t in enumerate(tasks)]
    batch = TokenizedRequests(requests, TokenArrays.from_lists(prompts), [])
    plan = plan_for(batch, PlanSettings(block_size=block_size, sharing=sharing), "tiny", "fp")
    return PreparedJob(model_dir=None, tokenizer=None, tokenized=batch, plan=plan, skipped=0)


def run_pooled(directory, job: PreparedJob, **config) -> tuple[dict, dict, list]:
    engine = Engine(directory, EngineConfig(**{"dtype": "float32", "attention": "torch", **config}), decode=lambda ids: "",
                    block_size=job.plan.settings.block_size)
    pooled, generated, stats = {}, {}, []

    def on_record(record):
        if isinstance(record, PooledResult):
            pooled[record.request.id] = record
        else:
            assert isinstance(record, Result), record
            generated[record.request.id] = record.completions[0].token_ids

    stats.append(run_records(engine, job, on_record))
    return pooled, generated, stats


def hf_pool(model, prompt: list[int], task: PoolingParams) -> np.ndarray:
    """transformers' final hidden states (after the final norm) pooled as sentence-transformers does."""
    with torch.no_grad():
        out = model(torch.tensor([prompt]), output_hidden_states=True)
    if task.kind == "logits":
        return out.logits[0, -1, list(task.token_ids)].numpy()
    hidden = out.hidden_states[-1][0]  # [L, D], after the final norm
    vector = hidden.mean(0) if task.kind == "mean" else hidden[-1]
    if task.dimensions is not None:
        vector = vector[: task.dimensions]
    return (F.normalize(vector, dim=-1) if task.normalize else vector).numpy()


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape, (what, got.shape, want.shape)
    assert np.abs(got - want).max() <= 1e-5, (what, np.abs(got - want).max())
    if len(want) > 2:
        cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cosine >= 0.99999, (what, cosine)


TASKS = [PoolingParams("last", normalize=True), PoolingParams("mean"), PoolingParams("mean", True, dimensions=24),
         PoolingParams("last", dimensions=40), PoolingParams("logits", token_ids=YES_NO)]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = save_tiny_checkpoint(directory, request.param, seed=5, eos_token_id=EOS)
    return directory, model


@pytest.mark.parametrize("sharing", ["multi", "off"])
@pytest.mark.parametrize("config", [{}, dict(token_budget=5), dict(kv_budget="40tok", token_budget=16, max_running=6)],
                         ids=["plain", "chunked-prefill", "preemption"])
def test_pooled_values_match_transformers(tiny, sharing, config):
    directory, model = tiny
    prompts = instruction_prompts()
    tasks = [TASKS[i % len(TASKS)] for i in range(len(prompts))]
    tasks[1] = tasks[4] = None  # generation requests ride along in the same steps
    job = make_pooled_job(prompts, tasks, sharing)
    if sharing == "multi":
        assert job.plan.stats.saving_ratio > 0.2 and job.plan.stats.max_depth >= 2
    pooled, generated, stats = run_pooled(directory, job, **config)
    assert set(pooled) | set(generated) == {f"r{i}" for i in range(len(prompts))}
    for i, (prompt, task) in enumerate(zip(prompts, tasks)):
        rid = f"r{i}"
        if task is None:
            assert generated[rid] == hf_greedy(model, prompt, 4), rid
            continue
        record = pooled[rid]
        assert record.prompt_tokens == len(prompt)
        assert_close(record.values, hf_pool(model, prompt, task), f"{rid} {task.kind}")
    if sharing == "multi":
        assert any(r.cached_tokens for r in pooled.values()), "pooled requests were meant to read shared segments"
    if "kv_budget" in config:
        assert stats[0].preemptions > 0, "the KV budget was meant to force preemption"


def test_mean_pooling_when_every_prompt_shares_one_long_prefix(tiny):
    """Mean-pooled members of one segment chain only: the segment sums are all the rows but their last."""
    directory, model = tiny
    base = list(range(10, 30))
    prompts = [base + [40 + i] for i in range(5)] + [list(base) + [40]]  # and a duplicate of the first
    task = PoolingParams("mean", normalize=True)
    job = make_pooled_job(prompts, [task] * len(prompts), "multi")
    pooled, _, _ = run_pooled(directory, job, token_budget=7)
    for i, prompt in enumerate(prompts):
        assert pooled[f"r{i}"].cached_tokens == 20
        assert_close(pooled[f"r{i}"].values, hf_pool(model, prompt, task), f"r{i}")
    assert np.array_equal(pooled["r0"].values, pooled["r5"].values)


def test_pooled_event_carries_float32_values(tiny):
    directory, _ = tiny
    job = make_pooled_job([[5, 6, 7]], [PoolingParams("logits", token_ids=YES_NO)], "multi")
    engine = Engine(directory, EngineConfig(dtype="float32", attention="torch"), decode=lambda ids: "",
                    block_size=job.plan.settings.block_size)
    events = []
    engine.run(job.shard(), events.append, lambda p: None, type("Never", (), {"requested": False})())
    (event,) = events
    assert isinstance(event, Pooled) and event.values.shape == (2,) and event.values.dtype == np.float32


def test_a_base_model_saved_alone_embeds(tmp_path):
    """Embedding checkpoints are often the bare decoder (no LM head, names without "model."), head tied."""
    full = save_tiny_checkpoint(tmp_path / "full", "qwen3", seed=8, tie_word_embeddings=True)
    full.model.save_pretrained(tmp_path / "base", safe_serialization=True)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "base" / "model.safetensors"), "pt") as f:
        assert "embed_tokens.weight" in f.keys() and not any(k.startswith("model.") for k in f.keys())
    prompts = instruction_prompts(3)
    task = PoolingParams("last", normalize=True)
    pooled, _, _ = run_pooled(tmp_path / "base", make_pooled_job(prompts, [task] * len(prompts), "multi"))
    for i, prompt in enumerate(prompts):
        assert_close(pooled[f"r{i}"].values, hf_pool(full, prompt, task), f"r{i}")
