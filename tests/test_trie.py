"""The prefix tree against a brute-force dict trie over block tuples, in all three sharing modes."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcli.planning import trie
from batchcli.planning.token_arrays import TokenArrays
from batchcli.planning.trie import build_tree


@st.composite
def workloads(draw):
    """Prompts built as system part + document part + question part from small pools (so multi-level
    sharing happens), over a 3-token vocabulary (so accidental sharing happens too)."""
    part = st.lists(st.integers(0, 2), max_size=6)
    pools = [draw(st.lists(part, min_size=1, max_size=3)) for _ in range(3)]
    picks = draw(st.lists(st.tuples(*(st.integers(0, len(p) - 1) for p in pools)), max_size=14))
    prompts = [sum((pools[level][i] for level, i in enumerate(pick)), []) or [0] for pick in picks]
    n = draw(st.lists(st.integers(1, 3), min_size=len(prompts), max_size=len(prompts)))
    return prompts, n, draw(st.sampled_from([1, 2, 4]))


def reference(prompts: list[list[int]], n: list[int], bs: int, sharing: str) -> tuple[set, list[int]]:
    """Brute force: ({(start, length, members, sequences)} per segment, shared tokens per request)."""
    members: dict[tuple, set[int]] = {}
    for i, p in enumerate(prompts):
        blocks = [tuple(p[j * bs : (j + 1) * bs]) for j in range((len(p) - 1) // bs)]
        for k in range(1, len(blocks) + 1):
            members.setdefault(tuple(blocks[:k]), set()).add(i)
    shared = {key for key, m in members.items() if sum(n[i] for i in m) >= 2}
    segs: list[dict] = []
    seg_of: dict[tuple, int] = {}
    for key in sorted(shared, key=len):  # parents first; extend the parent's segment while members agree
        up = key[:-1]
        if up in shared and members[up] == members[key]:
            seg_of[key] = seg_of[up]
            segs[seg_of[key]]["blocks"] += 1
        else:
            seg_of[key] = len(segs)
            segs.append({"start": len(up), "blocks": 1, "members": frozenset(members[key]), "parent": seg_of.get(up, -1)})
    chains = []
    for i in range(len(prompts)):
        deepest = max((k for k in shared if i in members[k]), key=len, default=None)
        chain, s = [], seg_of[deepest] if deepest is not None else -1
        while s >= 0:
            chain.append(s)
            s = segs[s]["parent"]
        chains.append(chain[::-1])
    if sharing == "off":
        segs, chains = [], [[] for _ in prompts]
    elif sharing == "single":
        segs, chains = _reference_single(segs, chains, n)
    out = {(s["start"] * bs, s["blocks"] * bs, s["members"], sum(n[i] for i in s["members"])) for s in segs}
    return out, [sum(segs[s]["blocks"] for s in c) * bs for c in chains]


def _reference_single(segs: list[dict], chains: list[list[int]], n: list[int]) -> tuple[list[dict], list[list[int]]]:
    def lifts(g: int) -> bool:
        c = segs[g]["parent"]
        return (sum(n[i] for i in segs[g]["members"]) - 1) * segs[g]["blocks"] > segs[c]["blocks"]

    groups: dict[tuple, set[int]] = {}
    for i, chain in enumerate(chains):
        if len(chain) >= 2 and lifts(chain[1]):
            groups.setdefault((chain[0], chain[1]), set()).add(i)
        elif chain:
            groups.setdefault((chain[0],), set()).add(i)
    out, new_chains = [], [[] for _ in chains]
    for key, reqs in groups.items():
        if sum(n[i] for i in reqs) >= 2:
            for i in reqs:
                new_chains[i] = [len(out)]
            out.append({"start": 0, "blocks": sum(segs[s]["blocks"] for s in key), "members": frozenset(reqs), "parent": -1})
    return out, new_chains


def observed(tree: trie.PrefixTree) -> set:
    members: list[set[int]] = [set() for _ in range(tree.num_segments)]
    for i in range(len(tree.leaf)):
        for s in tree.chain(i):
            members[s].add(i)
    return {(int(tree.start[s]), int(tree.length[s]), frozenset(members[s]), int(tree.sequences[s])) for s in range(tree.num_segments)}


@settings(max_examples=300, deadline=None)
@given(workloads(), st.sampled_from(["multi", "single", "off"]))
def test_tree_matches_brute_force(work, sharing):
    prompts, n, bs = work
    tree = build_tree(TokenArrays.from_lists(prompts), np.array(n), bs, sharing)
    want_segments, want_shared = reference(prompts, n, bs, sharing)
    assert observed(tree) == want_segments
    assert tree.shared.tolist() == want_shared
    physical = int(tree.length.sum()) + sum(k * (len(p) - s) for p, k, s in zip(prompts, n, want_shared))
    want_physical = sum(length for _, length, _, _ in want_segments) + sum(k * (len(p) - s) for p, k, s in zip(prompts, n, want_shared))
    assert physical == want_physical


@settings(max_examples=200, deadline=None)
@given(workloads(), st.sampled_from(["multi", "single", "off"]))
def test_tree_invariants(work, sharing):
    prompts, n, bs = work
    tree = build_tree(TokenArrays.from_lists(prompts), np.array(n), bs, sharing)
    assert ((tree.start % bs == 0) & (tree.length % bs == 0) & (tree.length > 0)).all()
    assert (tree.sequences >= 2).all()
    assert (tree.parent < np.arange(tree.num_segments)).all()
    for i, p in enumerate(prompts):
        chain = tree.chain(i)
        assert tree.shared[i] <= (len(p) - 1) // bs * bs  # the last prompt token is never shared
        end = 0
        for s in chain:  # segments tile the shared part from position 0 without gaps
            assert tree.start[s] == end
            end += int(tree.length[s])
        assert end == tree.shared[i]


def test_identical_prompts_share_all_but_the_last_partial_block():
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9]]
    tree = build_tree(TokenArrays.from_lists(prompts), np.array([1, 1]), 2, "multi")
    assert tree.length.tolist() == [4] and tree.shared.tolist() == [4, 4]
    whole_blocks = build_tree(TokenArrays.from_lists([[5, 6, 7, 8]] * 2), np.array([1, 1]), 2, "multi")
    assert whole_blocks.length.tolist() == [2]  # [7, 8] holds the last token: computed privately


def test_one_request_with_samples_shares_with_itself():
    tree = build_tree(TokenArrays.from_lists([[1, 2, 3, 4, 5]]), np.array([3]), 2, "multi")
    assert tree.length.tolist() == [4] and tree.sequences.tolist() == [3]
    alone = build_tree(TokenArrays.from_lists([[1, 2, 3, 4, 5]]), np.array([1]), 2, "multi")
    assert alone.num_segments == 0 and alone.leaf.tolist() == [-1]


def test_single_lifts_a_branch_worth_its_own_group():
    system, doc_a, doc_b = [1] * 4, [2] * 8, [3] * 2
    prompts = [system + doc_a + [9, q] for q in range(3)] + [system + doc_b + [9, q] for q in range(2)] + [system + [9]]
    tree = build_tree(TokenArrays.from_lists(prompts), np.ones(6, np.int64), 2, "single")
    got = sorted(zip(tree.length.tolist(), tree.requests.tolist()))
    # doc_a: (3 - 1) * 8 > 4, lifted with prefix system + doc_a; doc_b: (2 - 1) * 2 <= 4, stays with the
    # system prompt, together with the prompt that is the system prompt itself
    assert got == [(4, 3), (12, 3)]
    assert tree.shared.tolist() == [12, 12, 12, 4, 4, 4]  # system + [9]: (5 - 1) // 2 * 2 = 4 tokens shared


def test_hash_collisions_fall_back_to_exact_grouping():
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(0, 3, size=int(rng.integers(1, 20)))) for _ in range(60)]
    tokens, n = TokenArrays.from_lists(prompts), rng.integers(1, 3, size=60)
    want = build_tree(tokens, n, 2, "multi")
    with mock.patch.object(trie, "_block_keys", lambda parent, block: np.zeros(len(parent), np.uint64)):
        got = build_tree(tokens, n, 2, "multi")
    assert observed(got) == observed(want) and got.shared.tolist() == want.shared.tolist()
    assert want.num_segments > 3


@pytest.mark.parametrize("bad", [dict(n=np.array([0])), dict(block_size=0), dict(sharing="deep"), dict(n=np.array([1, 1]))])
def test_bad_arguments_are_refused(bad):
    args = dict(tokens=TokenArrays.from_lists([[1, 2]]), n=np.array([1]), block_size=2, sharing="multi") | bad
    with pytest.raises(ValueError, match=r"n must|block_size|sharing"):
        build_tree(**args)


def test_many_prompts_build_fast_and_exact():
    rng = np.random.default_rng(0)
    docs = rng.integers(100, 30000, size=(200, 64), dtype=np.int32)
    docs[:, 0] = np.arange(200)  # distinct first token: documents never share with each other
    prompts = [np.concatenate([docs[d], [d % 7 + 1, q], rng.integers(0, 9, size=5)]) for d in range(200) for q in range(20)]
    tree = build_tree(TokenArrays.from_lists(prompts), np.ones(len(prompts), np.int64), 16, "multi")
    assert tree.num_segments == 200 and (tree.length == 64).all() and (tree.requests == 20).all()
