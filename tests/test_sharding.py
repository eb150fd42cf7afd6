"""The sharder over random plans: a partition of the job, cuts only when they pay, balance bounds."""

from __future__ import annotations

import heapq

from hypothesis import assume, given, settings, strategies as st

from batchcli.planning.shard import Shard, plan_requests
from batchcli.planning.plan import PlanSettings, build_plan
from batchcli.params import SamplingParams
from batchcli.planning.sharding import TokenCosts, make_shards, pull_loads, skew
from batchcli.planning.token_arrays import TokenArrays

COSTS = TokenCosts(prefill_s=1.0, decode_s=8.0)


def _whole(prompts: list[list[int]], params: list[SamplingParams]) -> Shard:
    tokens = TokenArrays.from_lists(prompts)
    plan = plan_requests(tokens, params, PlanSettings(block_size=4), model="m", fingerprint="f", errors=0)
    return Shard(tuple(range(len(params))), tokens, tuple(params), plan)


@st.composite
def jobs(draw) -> Shard:
    """Systems -> documents -> questions, plus unshared prompts; random output budgets and n."""
    tok = st.integers(3, 500)
    prompts = []
    for _ in range(draw(st.integers(0, 3))):
        system = draw(st.lists(tok, min_size=4, max_size=16))
        for _ in range(draw(st.integers(1, 3))):
            doc = draw(st.lists(tok, min_size=0, max_size=12))
            for _ in range(draw(st.integers(1, 6))):
                prompts.append(system + doc + draw(st.lists(tok, min_size=1, max_size=6)))
    prompts += draw(st.lists(st.lists(tok, min_size=1, max_size=20), max_size=5))
    params = [SamplingParams(max_tokens=draw(st.integers(1, 12)), n=draw(st.integers(1, 2))) for _ in prompts]
    return _whole(prompts, params)


def _true_cost(whole: Shard, index: tuple[int, ...]) -> float:
    part = whole.subset(index)
    return part.plan.stats.physical_prefill_tokens * COSTS.prefill_s + part.output_budget * COSTS.decode_s


def _groups(whole: Shard) -> list[tuple[int, ...]]:
    """Requests by top-level group (a top-level segment's members, or one unshared request), in order."""
    top: dict[int, list[int]] = {}
    for position, request in enumerate(whole.plan.order):
        chain = whole.plan.chain(position)
        top.setdefault(chain[0] if chain else -1 - position, []).append(request)
    return [tuple(sorted(g)) for g in top.values()]


def _unsplit_finish(whole: Shard, workers: int, per_worker: int = 4) -> float:
    """Every group whole, packed largest-first into workers x per_worker bins, then pulled."""
    position = {r: p for p, r in enumerate(whole.plan.order)}
    groups = sorted(((_true_cost(whole, g), min(position[r] for r in g)) for g in _groups(whole)),
                    key=lambda x: (-x[0], x[1]))  # the sharder's tie rule: the earlier group first
    heap = [(0.0, i) for i in range(min(workers * per_worker, len(groups)))]
    for cost, _ in groups:
        load, i = heapq.heappop(heap)
        heapq.heappush(heap, (load + cost, i))
    return max(pull_loads(sorted((load for load, _ in heap), reverse=True), workers))


@settings(max_examples=60, deadline=None)
@given(jobs(), st.integers(1, 9))
def test_parts_partition_the_job_and_plan_their_own_prompts(whole, workers):
    result = make_shards(whole, workers, COSTS)
    seen = [i for p in result.parts for i in p.index]
    assert sorted(seen) == list(range(len(whole)))  # every request in exactly one part
    assert all(list(p.index) == sorted(p.index) for p in result.parts)
    assert [p.cost for p in result.parts] == sorted((p.cost for p in result.parts), reverse=True)
    for p in result.parts[:2]:
        shard = whole.subset(p.index)
        assert shard.plan == build_plan(shard.tokens, [q.max_tokens for q in shard.params],
                                        [q.n for q in shard.params], whole.plan.settings, model="m",
                                        fingerprint="f", errors=0)
        assert shard.plan.stats.physical_prefill_tokens <= p.prefill_tokens  # estimates: exact or above
        assert shard.output_budget == p.output_tokens
    assert make_shards(whole, workers, COSTS) == result  # deterministic


@settings(max_examples=60, deadline=None)
@given(jobs(), st.integers(2, 9))
def test_a_group_is_split_only_when_it_finishes_sooner(whole, workers):
    assume(len(whole) > 0)
    result = make_shards(whole, workers, COSTS)
    finish = max(pull_loads([_true_cost(whole, p.index) for p in result.parts], workers))
    unsplit = _unsplit_finish(whole, workers)
    owner = {i: k for k, p in enumerate(result.parts) for i in p.index}
    split = [g for g in _groups(whole) if len({owner[i] for i in g}) > 1]
    if split:
        assert result.extra_pieces > 0
        assert finish < unsplit, (finish, unsplit)
    else:
        assert result.extra_pieces == 0 and result.recomputed_prefill_tokens == 0
    # list scheduling's bound over the unsplit groups holds for whatever cut was chosen
    costs = [_true_cost(whole, g) for g in _groups(whole)]
    assert finish <= sum(costs) / workers + max(costs) + 1e-9


def test_one_worker_gets_the_whole_job_and_an_empty_job_no_parts():
    whole = _whole([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 11], [3, 4]], [SamplingParams(max_tokens=3)] * 3)
    one = make_shards(whole, 1, COSTS)
    assert [p.index for p in one.parts] == [(0, 1, 2)]
    assert make_shards(_whole([], []), 4, COSTS).parts == ()


def test_one_giant_group_is_cut_when_decoding_dominates():
    system = list(range(10, 42))  # 32 shared tokens: cheap to recompute next to 64 x 40 x 8 of decode
    prompts = [system + [100 + i, 7] for i in range(64)]
    whole = _whole(prompts, [SamplingParams(max_tokens=40, n=1 + i % 2) for i in range(64)])
    result = make_shards(whole, 4, COSTS)
    assert result.extra_pieces > 0 and result.recomputed_prefill_tokens > 0
    loads = pull_loads([_true_cost(whole, p.index) for p in result.parts], 4)
    assert skew(loads) < 0.1 and max(loads) < _unsplit_finish(whole, 4)


def test_a_prefix_that_dominates_is_never_recomputed():
    system = list(range(10, 10 + 400))  # recomputing 400 tokens costs more than any imbalance 8 short questions make
    prompts = [system + [500 + i, 7] for i in range(8)]
    whole = _whole(prompts, [SamplingParams(max_tokens=2)] * 8)
    result = make_shards(whole, 4, COSTS)
    assert [p.index for p in result.parts] == [tuple(range(8))] and result.recomputed_prefill_tokens == 0


def test_more_workers_than_groups():
    whole = _whole([[3 + i, 9, 9] for i in range(3)], [SamplingParams(max_tokens=4)] * 3)
    result = make_shards(whole, 8, COSTS)
    assert sorted(p.index for p in result.parts) == [(0,), (1,), (2,)]
