"""The engine's seam: a Shard in (plain, picklable data), events out naming job-level request indices."""

from __future__ import annotations

import pickle

import pytest

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine
from batchcli.engine.events import Answer, Refusal
from batchcli.results import resolve
from batchcli.planning.plan import build_plan
from batchcli.params import SamplingParams
from batchcli.results import Failure, Result
from helpers_models import save_tiny_checkpoint
from test_engine import EOS, _Never, make_job, shared_prompts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    save_tiny_checkpoint(directory, "llama", seed=3, eos_token_id=EOS)
    return directory


def _events(directory, shard, **config) -> list:
    engine = Engine(directory, EngineConfig(dtype="float32", attention="torch", **config), decode=lambda ids: "")
    events: list = []
    engine.run(shard, events.append, lambda p: None, _Never())
    return events


def _params(count: int) -> list[SamplingParams]:
    return [SamplingParams(max_tokens=4 + i % 5, n=1 + (i % 4 == 0), ignore_eos=True) for i in range(count)]


def test_a_pickled_subset_runs_alone_and_answers_as_the_whole_job(tiny):
    prompts = shared_prompts(2)
    job = make_job(prompts, _params(len(prompts)), "multi")
    whole = {e.request: e for e in _events(tiny, job.shard())}
    part = pickle.loads(pickle.dumps(job.shard().subset([1, 4, 5, 9, 12, 13])))
    got = _events(tiny, part)
    assert sorted(e.request for e in got) == [1, 4, 5, 9, 12, 13]  # job-level indices, one event each
    for e in got:  # greedy fp32: what a request gets does not depend on which others share its shard
        assert isinstance(e, Answer)
        assert [c.token_ids for c in e.completions] == [c.token_ids for c in whole[e.request].completions]
        assert e.prompt_tokens == len(prompts[e.request])


def test_a_subset_is_replanned_over_its_own_prompts():
    prompts = shared_prompts(1)
    params = _params(len(prompts))
    shard = make_job(prompts, params, "multi").shard()
    keep = [0, 2, 3, 7, 8]
    part = shard.subset(keep)
    assert part.index == tuple(keep)
    assert part.plan == build_plan(part.tokens, [p.max_tokens for p in part.params], [p.n for p in part.params],
                                   shard.plan.settings, model=shard.plan.model, fingerprint=shard.plan.fingerprint,
                                   errors=shard.plan.stats.errors)
    assert part.output_budget == sum(params[i].max_tokens * params[i].n for i in keep)


def test_a_misfit_is_refused_under_its_job_index(tiny):
    prompts = shared_prompts(0)
    params = _params(len(prompts))
    params[3] = SamplingParams(max_tokens=400, ignore_eos=True)  # alone needs > 64 blocks of 4
    shard = make_job(prompts, params, "multi").shard().subset([2, 3, 5])
    events = _events(tiny, shard, kv_budget="256tok")
    refused = [e for e in events if isinstance(e, Refusal)]
    assert [(e.request, e.code) for e in refused] == [(3, "kv_budget_exceeded")]
    assert sorted(e.request for e in events) == [2, 3, 5]


def test_resolve_names_the_job_request():
    job = make_job([[5, 6, 7], [5, 6, 8]], _params(2), "off")
    answer = resolve(Answer(1, (), 3, 0), job.tokenized.requests)
    failure = resolve(Refusal(0, "sampling_failed", "x"), job.tokenized.requests)
    assert isinstance(answer, Result) and answer.request.id == "r1"
    assert isinstance(failure, Failure) and (failure.request.id, failure.code) == ("r0", "sampling_failed")


def test_a_shard_refuses_mismatched_parts():
    shard = make_job([[5, 6, 7], [5, 6, 8]], _params(2), "off").shard()
    with pytest.raises(ValueError, match="one index, prompt and parameter set"):
        type(shard)(shard.index[:1], shard.tokens, shard.params, shard.plan)
