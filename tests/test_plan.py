"""The plan: layout invariants on random workloads, exact statistics, decode-heavy order, the JSON file."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcli.planning.plan import (
    Plan, PlanMismatchError, PlanSettings, PlanStats, build_plan, check_fingerprint, plan_from_json, plan_to_json,
    top_segments,
)
from batchcli.planning.token_arrays import TokenArrays


def make_plan(prompts, max_tokens, n, block_size=4, sharing="multi") -> Plan:
    return build_plan(
        TokenArrays.from_lists(prompts), np.array(max_tokens), np.array(n), PlanSettings(block_size, sharing),
        model="tiny", fingerprint="sha256:abc", errors=2,
    )


@st.composite
def jobs(draw):
    """Prompts = a pick from each of three small pools of parts (multi-level sharing) over 3 tokens."""
    part = st.lists(st.integers(0, 2), max_size=6)
    pools = [draw(st.lists(part, min_size=1, max_size=3)) for _ in range(3)]
    picks = draw(st.lists(st.tuples(*(st.integers(0, len(p) - 1) for p in pools)), max_size=14))
    prompts = [sum((pools[level][i] for level, i in enumerate(pick)), []) or [1] for pick in picks]
    size = len(prompts)
    n = draw(st.lists(st.integers(1, 3), min_size=size, max_size=size))
    max_tokens = draw(st.lists(st.integers(1, 50), min_size=size, max_size=size))
    return prompts, max_tokens, n, draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from(["multi", "single", "off"]))


def ratio_of(plan: Plan, prompts, max_tokens, n, shared, seg: int | None = None, pos: int | None = None) -> float:
    """Decode ratio of a sibling item, recomputed from the plan alone: a segment subtree or one request."""
    if pos is not None:
        i = plan.order[pos]
        return max_tokens[i] * n[i] / (n[i] * (len(prompts[i]) - shared[pos]))
    s = plan.segments[seg]
    inside = [t for t in plan.segments if t.first >= s.first and t.first + t.count <= s.first + s.count and seg in plan.chain(t.first)]
    positions = range(s.first, s.first + s.count)
    out = sum(max_tokens[plan.order[p]] * n[plan.order[p]] for p in positions)
    phys = sum(t.length for t in inside) + sum(n[plan.order[p]] * (len(prompts[plan.order[p]]) - shared[p]) for p in positions)
    return out / phys


@settings(max_examples=200, deadline=None)
@given(jobs())
def test_plan_layout_invariants(job):
    prompts, max_tokens, n, bs, sharing = job
    plan = make_plan(prompts, max_tokens, n, bs, sharing)
    assert sorted(plan.order) == list(range(len(prompts)))
    chains = [plan.chain(p) for p in range(len(prompts))]
    shared = [sum(plan.segments[s].length for s in c) for c in chains]
    for s in plan.segments:
        assert s.start % bs == 0 and s.length % bs == 0 and s.length > 0 and s.sequences >= 2
        assert s.parent < s.id
        members = [p for p in range(len(prompts)) if s.id in chains[p]]
        assert members == list(range(s.first, s.first + s.count))  # members are contiguous in the order
        assert s.sequences == sum(n[plan.order[p]] for p in members)
    for p, chain in enumerate(chains):
        prompt = prompts[plan.order[p]]
        assert shared[p] <= (len(prompt) - 1) // bs * bs  # the last token is computed privately
        pieces = [prompts[plan.order[plan.segments[s].first]][plan.segments[s].start : plan.segments[s].start + plan.segments[s].length] for s in chain]
        assert sum(pieces, []) + prompt[shared[p] :] == prompt  # segments (as their first member holds them) + private tail
    physical = sum(s.length for s in plan.segments) + sum(n[plan.order[p]] * (len(prompts[plan.order[p]]) - shared[p]) for p in range(len(prompts)))
    assert plan.stats.physical_prefill_tokens == physical
    assert plan.stats.logical_prefill_tokens == sum(k * len(x) for k, x in zip(n, prompts))
    for parent in [-1] + [s.id for s in plan.segments]:  # siblings in execution order: ratios never increase
        kids = [(s.first, ratio_of(plan, prompts, max_tokens, n, shared, seg=s.id)) for s in plan.segments if s.parent == parent]
        kids += [(p, ratio_of(plan, prompts, max_tokens, n, shared, pos=p)) for p in range(len(prompts)) if plan.leaf[p] == parent]
        ratios = [r for _, r in sorted(kids)]
        assert all(a >= b - 1e-12 for a, b in zip(ratios, ratios[1:]))
    assert plan_from_json(plan_to_json(plan)) == plan


def test_stats_on_a_hand_made_case():
    sys_, doc = list(range(1, 9)), [20, 21, 22, 23]
    prompts = [sys_ + doc + [30, 31, 32], sys_ + doc + [40, 41, 42], sys_ + [50, 51, 52, 53, 60], [7, 7, 7]]
    plan = make_plan(prompts, max_tokens=[10, 10, 100, 5], n=[1, 2, 1, 1], block_size=4)
    assert plan.stats == PlanStats(
        requests=4, sequences=5, errors=2,
        logical_prefill_tokens=15 + 2 * 15 + 13 + 3,
        physical_prefill_tokens=8 + 4 + 3 + 2 * 3 + 5 + 3,  # sys, doc once; private tails per sequence
        saving_ratio=1 - 29 / 61,
        groups=3,  # doc (requests 0, 1), sys (request 2 ends there), request 3 unshared
        mean_sharing_degree=(4 + 3) / 2,
        max_depth=2,
        est_kv_peak_tokens=8 + 5 + 100,  # sys group: its 8 shared tokens + request 2's tail and output
    )
    # sys subtree 130 / 26 beats request 3 (5 / 3); inside sys, request 2 (100 / 5) beats doc (30 / 13);
    # inside doc, requests 0 and 1 tie at 10 / 3 and keep input order
    assert plan.order == (2, 0, 1, 3)
    assert [(s.parent, s.start, s.length, s.first, s.count, s.sequences) for s in plan.segments] == [(-1, 0, 8, 0, 3, 4), (0, 8, 4, 1, 2, 3)]
    assert plan.leaf == (0, 1, 1, -1)


def test_decode_heavy_group_goes_first():
    long_doc, short_doc = list(range(100, 164)), list(range(200, 208))
    prompts = [long_doc + [1, q] for q in range(3)] + [short_doc + [2, q] for q in range(3)] + [[9] * 20]
    # ratios: short group 1200 / (8 + 3 * 2), long group 12 / (64 + 3 * 2), unshared request 2 / 20
    plan = make_plan(prompts, max_tokens=[4] * 3 + [400] * 3 + [2], n=[1] * 7)
    assert plan.order == (3, 4, 5, 0, 1, 2, 6)
    assert [(s.length, s.first) for s in plan.segments] == [(8, 0), (64, 3)]
    rush = make_plan(prompts, max_tokens=[4] * 3 + [400] * 3 + [10_000], n=[1] * 7)
    assert rush.order[0] == 6  # an unshared request competes with the top-level groups by the same rule


def test_paper_shaped_saving_ratio_is_exact():
    rng = np.random.default_rng(1)
    contexts = rng.integers(100, 30000, size=(25, 96), dtype=np.int32)
    contexts[:, 0] = np.arange(25)
    prompts = [np.concatenate([contexts[c], [q + 1], rng.integers(100, 30000, size=19)]) for c in range(25) for q in range(8)]
    order = rng.permutation(len(prompts))
    plan = make_plan([prompts[i] for i in order], [16] * 200, [1] * 200, block_size=16)
    assert plan.stats.saving_ratio == pytest.approx(1 - (25 * 96 + 200 * 20) / (200 * 116), abs=1e-15)
    assert plan.stats.groups == 25 and plan.stats.mean_sharing_degree == 8.0
    assert plan.stats.est_kv_peak_tokens == 96 + 8 * (20 + 16)


def test_sharing_off_and_single():
    prompts = [[1] * 8 + [2] * 8 + [q] for q in range(4)]
    off = make_plan(prompts, [1] * 4, [1] * 4, sharing="off")
    assert off.segments == () and off.stats.saving_ratio == 0.0 and off.stats.groups == 4
    single = make_plan(prompts, [1] * 4, [1] * 4, sharing="single")
    assert [(s.start, s.length, s.count) for s in single.segments] == [(0, 16, 4)]


def test_json_round_trip_is_compact_and_exact():
    plan = make_plan([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7], [8]], [5, 6, 7], [1, 1, 2], block_size=2)
    data = plan_to_json(plan)
    assert orjson.loads(data)["version"] == 1 and b" " not in data
    assert plan_from_json(data) == plan


def _edited(**changes) -> bytes:
    doc = orjson.loads(plan_to_json(make_plan([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]], [5, 5], [1, 1], block_size=2)))
    for path, value in changes.items():
        *outer, key = path.split("__")
        target = doc
        for k in outer:
            target = target[k]
        if value is None:
            del target[key]
        else:
            target[key] = value
    return orjson.dumps(doc)


@pytest.mark.parametrize("data, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (_edited(version=2), "version 2 is not supported"),
    (_edited(version=None), "version None"),
    (_edited(order=None), "keys"),
    (_edited(order=[0, 0]), "permutation"),
    (_edited(order=[0, "1"]), "order must be a list of integers"),
    (_edited(leaf=[0]), "leaf"),
    (_edited(settings__block_size=3), "power of two"),
    (_edited(stats__saving_ratio="high"), "saving_ratio must be float"),
    (_edited(segments__parent=[0]), "parent must come before"),
    (_edited(segments__first=[5]), "outside the order"),
])
def test_malformed_plan_files_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        plan_from_json(data)


def test_fingerprint_mismatch_is_refused():
    plan = make_plan([[1, 2, 3]], [1], [1])
    check_fingerprint(plan, "sha256:abc")
    with pytest.raises(PlanMismatchError, match="sha256:other"):
        check_fingerprint(plan, "sha256:other")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        make_plan([[1, 2]], [0], [1])
    with pytest.raises(ValueError, match="one entry per prompt"):
        make_plan([[1, 2]], [1, 1], [1])


def test_top_segments_shows_the_head_of_the_tree():
    system = [1] * 4
    prompts = [system + [d] * 4 + [9, q] for d in (2, 3, 4) for q in range(2)]
    plan = make_plan(prompts, [1] * 6, [1] * 6)
    (root,), hidden = top_segments(plan, limit=2)
    assert hidden == 0 and root.segment.length == 4 and root.segment.count == 6
    assert len(root.children) == 2 and root.hidden == 1
    assert [c.segment.first for c in root.children] == [0, 2]  # equal ratios: input order
    nodes, _ = top_segments(plan, limit=5, depth=1)
    assert nodes[0].children == () and nodes[0].hidden == 3
