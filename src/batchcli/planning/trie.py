"""Global prefix tree: a compressed radix tree over the prompts' token ids, cut at KV-block boundaries.

Role: find every run of prompt tokens that several sequences share, so the plan prefills it once.
Invariants of a `PrefixTree` (the engine relies on them):
- a segment starts on a block boundary and is a positive whole number of blocks long;
- a segment is shared by >= 2 sequences (a request with n samples is n sequences);
- a request never shares its last prompt token: its shared part is at most ((L - 1) // B) * B tokens;
- a child segment starts where its parent ends, and its id is larger than its parent's.

How it is built: level by level over block depth, an MSD radix sort over whole blocks. Each level
hashes one block per still-shared request together with the request's node at the level above,
groups equal keys by sorting them, checks the grouping exactly against the tokens (falling back to an
exact row-wise np.unique on a hash collision) and drops requests no other sequence shares with. Work
is one vectorised pass per shared block depth, proportional to the shared tokens; there is no Python
loop per token or per request.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from batchcli.choices import Sharing, check
from batchcli.planning.token_arrays import TokenArrays, per_prompt

_HASH_SEED = 0x5EED_B10C


@dataclass(frozen=True, slots=True)
class PrefixTree:
    """Shared segments (S of them) over R requests; ids are indices into the segment arrays."""

    block_size: int
    sharing: Sharing
    parent: np.ndarray  # int64 [S]: enclosing segment, -1 at the top level
    start: np.ndarray  # int64 [S]: token offset of the segment inside every member prompt
    length: np.ndarray  # int64 [S]: tokens, a positive multiple of block_size
    requests: np.ndarray  # int64 [S]: member requests (every request in the subtree)
    sequences: np.ndarray  # int64 [S]: member sequences (sum of n over member requests)
    depth: np.ndarray  # int64 [S]: nesting level, 1 at the top
    leaf: np.ndarray  # int64 [R]: deepest segment of each request, -1 when it shares nothing
    shared: np.ndarray  # int64 [R]: prompt tokens covered by the request's segments (end of its leaf)

    @property
    def num_segments(self) -> int:
        return len(self.parent)

    def chain(self, request: int) -> list[int]:
        """Segment ids of one request, outermost first."""
        out: list[int] = []
        s = int(self.leaf[request])
        while s >= 0:
            out.append(s)
            s = int(self.parent[s])
        return out[::-1]


def build_tree(tokens: TokenArrays, n: np.ndarray, block_size: int, sharing: Sharing) -> PrefixTree:
    """Build the prefix tree of `tokens` (request i = prompt i) with `n[i]` samples per request.

    sharing: "multi" keeps the whole tree; "single" is BatchLLM's one-level form (one shared prefix
    per group, see `_single_level`); "off" shares nothing.
    """
    n = per_prompt(n, "n", len(tokens))
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    check("sharing", sharing, Sharing)
    if sharing == "off":
        return _tree(block_size, sharing, np.full(len(tokens), -1, np.int64), np.zeros(len(tokens), np.int64))
    tree = _multi_level(tokens, n, block_size)
    return tree if sharing == "multi" else _single_level(tree, n)


def _tree(block_size: int, sharing: Sharing, leaf: np.ndarray, shared: np.ndarray, **segments: np.ndarray) -> PrefixTree:
    empty = np.zeros(0, np.int64)
    cols = {k: np.asarray(segments.get(k, empty), dtype=np.int64) for k in ("parent", "start", "length", "requests", "sequences", "depth")}
    return PrefixTree(block_size=block_size, sharing=sharing, leaf=leaf, shared=shared, **cols)


def _multi_level(tokens: TokenArrays, n: np.ndarray, bs: int) -> PrefixTree:
    num = len(tokens)
    blocks = np.maximum(tokens.lengths - 1, 0) // bs  # [R] shareable whole blocks (last token stays private)
    leaf = np.full(num, -1, np.int64)
    shared = np.zeros(num, np.int64)
    act = np.flatnonzero(blocks > 0)  # [A] requests that may still share at this depth
    if len(act) == 0:
        return _tree(bs, "multi", leaf, shared)
    windows = np.lib.stride_tricks.sliding_window_view(tokens.flat, bs)  # [T - bs + 1, bs], a view
    pos = tokens.offsets[act]  # [A] flat position of each active request's current block
    # per active request: its node at the level above (an id local to that level), the node's segment,
    # member count and segment depth
    node_up = np.zeros(len(act), np.int64)
    seg_up = np.full(len(act), -1, np.int64)
    members_up = np.full(len(act), -1, np.int64)
    depth_up = np.zeros(len(act), np.int64)
    new_segs: list[tuple[np.ndarray, ...]] = []
    seg_blocks: list[np.ndarray] = []  # segment id of every shared block node, for segment lengths
    num_segs = 0
    k = 0
    while len(act):
        block = windows[pos]  # [A, bs], rows copied contiguously
        node, rep, members = _group(node_up, block)  # node [A], rep [N], members [N]
        seqs = np.bincount(node, weights=n[act], minlength=len(rep)).astype(np.int64)  # [N]
        keep = seqs >= 2  # [N]
        # a shared node opens a new segment unless it holds exactly its parent's members
        opens = keep & (members != members_up[rep])  # [N]
        seg_ids = np.cumsum(opens) - 1 + num_segs  # [N]
        seg_of = np.where(opens, seg_ids, seg_up[rep])  # [N]
        depth_of = depth_up[rep] + opens  # [N]
        o = rep[opens]
        new_segs.append((seg_up[o], np.full(len(o), k * bs), members[opens], seqs[opens], depth_up[o] + 1))
        num_segs += len(o)
        seg_blocks.append(seg_of[keep])

        live = keep[node]  # [A]
        act, node, pos = act[live], node[live], pos[live]
        leaf[act] = seg_of[node]
        shared[act] = (k + 1) * bs
        k += 1
        more = blocks[act] > k
        act, node_up, pos = act[more], node[more], pos[more] + bs
        seg_up, members_up, depth_up = seg_of[node_up], members[node_up], depth_of[node_up]
    cols = [np.concatenate(c) for c in zip(*new_segs)]
    lengths = np.bincount(np.concatenate(seg_blocks), minlength=num_segs) * bs
    return _tree(bs, "multi", leaf, shared, parent=cols[0], start=cols[1], length=lengths, requests=cols[2], sequences=cols[3], depth=cols[4])


def _block_keys(parent: np.ndarray, words: np.ndarray) -> np.ndarray:
    """A 64-bit key per row of (parent node, block words); equal rows give equal keys."""
    mult = _multipliers(words.shape[1] + 1)
    key = (words * mult[1:]).sum(axis=1, dtype=np.uint64)  # [A], wrapping mod 2^64
    return key + parent.astype(np.uint64) * mult[0]


@functools.lru_cache(maxsize=8)
def _multipliers(count: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers, so keys (and the order they induce) are the same every run."""
    rng = np.random.default_rng(_HASH_SEED)
    return rng.integers(0, 2**64 - 1, size=count, dtype=np.uint64, endpoint=True) | np.uint64(1)


def _group(parent: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal (parent, block) rows: (group of each row [A], one row per group [N], group sizes [N])."""
    # two int32 tokens per 64-bit word halves the hashing and checking work
    words = block.view(np.uint64) if block.shape[1] % 2 == 0 else block.astype(np.uint64)  # [A, W]
    key = _block_keys(parent, words)  # [A]
    by_key = np.argsort(key)  # [A]
    head = np.ones(len(key), bool)  # [A] first row of each run of equal keys, in key order
    head[1:] = key[by_key[1:]] != key[by_key[:-1]]
    node = np.empty(len(key), np.int64)
    node[by_key] = np.cumsum(head) - 1
    firsts = np.flatnonzero(head)  # [N]
    rep, members = by_key[firsts], np.diff(np.append(firsts, len(key)))  # [N], [N]
    back = rep[node]  # [A] the representative row of each row's group
    if np.array_equal(parent[back], parent) and np.array_equal(words[back], words):
        return node, rep, members
    rows = np.column_stack([parent, block.astype(np.int64)])  # [A, 1 + bs]; a hash collision: group exactly
    _, rep, node, members = np.unique(rows, axis=0, return_index=True, return_inverse=True, return_counts=True)
    return node.ravel(), rep, members


def _single_level(tree: PrefixTree, n: np.ndarray) -> PrefixTree:
    """BatchLLM's one-level sharing: each group is one shared prefix plus distinct suffixes.

    A top segment c keeps the requests under it; a child g of c is lifted into its own group with
    prefix c + g when `(sequences(g) - 1) * len(g) > len(c)` (BatchLLM's rule, counted in sequences
    so that n samples share too; with n = 1 it is BatchLLM's requests_under(g)). Deeper sharing is
    dropped. What stays under c (requests in no lifted child, a prompt equal to c's prefix included)
    shares c if it still has >= 2 sequences, and shares nothing otherwise.
    """
    if tree.num_segments == 0:
        return _tree(tree.block_size, "single", tree.leaf, tree.shared)
    top, second = _level_ancestors(tree)
    is_child = tree.depth == 2  # [S]
    lifted = np.zeros(tree.num_segments, bool)
    lifted[is_child] = (tree.sequences[is_child] - 1) * tree.length[is_child] > tree.length[tree.parent[is_child]]
    has = tree.leaf >= 0  # [R]
    req_top = np.where(has, top[tree.leaf], -1)  # [R]
    req_child = np.where(has, second[tree.leaf], -1)  # [R]
    req_lifted = (req_child >= 0) & lifted[np.maximum(req_child, 0)]  # [R]
    stays = has & ~req_lifted
    rest_seqs = np.bincount(req_top[stays], weights=n[stays], minlength=tree.num_segments).astype(np.int64)  # [S]
    rest_reqs = np.bincount(req_top[stays], minlength=tree.num_segments)  # [S]
    kept = (tree.depth == 1) & (rest_seqs >= 2)  # [S]
    tops, kids = np.flatnonzero(kept), np.flatnonzero(lifted)
    new_id = np.full(tree.num_segments, -1, np.int64)
    new_id[tops] = np.arange(len(tops))
    new_id[kids] = len(tops) + np.arange(len(kids))
    length = np.concatenate([tree.length[tops], tree.length[tree.parent[kids]] + tree.length[kids]])
    leaf = np.where(req_lifted, new_id[np.maximum(req_child, 0)], np.where(has, new_id[np.maximum(req_top, 0)], -1))
    shared = np.zeros(len(leaf), np.int64)
    shared[leaf >= 0] = length[leaf[leaf >= 0]]
    count = len(tops) + len(kids)
    return _tree(
        tree.block_size, "single", leaf, shared, parent=np.full(count, -1), start=np.zeros(count), length=length,
        requests=np.concatenate([rest_reqs[tops], tree.requests[kids]]),
        sequences=np.concatenate([rest_seqs[tops], tree.sequences[kids]]), depth=np.ones(count),
    )


def _level_ancestors(tree: PrefixTree) -> tuple[np.ndarray, np.ndarray]:
    """Per segment: its top-level ancestor, and its depth-2 ancestor (-1 for top-level segments)."""
    top = np.arange(tree.num_segments)  # [S]
    second = np.where(tree.depth == 2, top, -1)  # [S]
    for d in range(2, int(tree.depth.max(initial=0)) + 1):
        s = np.flatnonzero(tree.depth == d)
        top[s] = top[tree.parent[s]]
        if d > 2:
            second[s] = second[tree.parent[s]]
    return top, second
