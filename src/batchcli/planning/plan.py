"""The execution plan: shared segments, execution order and statistics; a versioned JSON file.

Invariants: segment ids are indices into `Plan.segments` and parents come before children; the
member requests of a segment are contiguous in `order` (positions first .. first + count - 1);
`leaf[p]` is the deepest segment of the request at order position p, or -1.

Order: depth-first over the prefix tree. Among siblings (child segments, and the requests whose
deepest segment is the parent, each a singleton; at the top level the unshared requests) the larger
estimated decode ratio goes first: expected output tokens (max_tokens x n) over prompt tokens to
compute (physical tokens of the subtree); ties go to the smaller request index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import orjson

from batchcli.choices import Sharing, check
from batchcli.errors import UsageError
from batchcli.planning.token_arrays import TokenArrays, per_prompt
from batchcli.planning.trie import PrefixTree, build_tree

PLAN_VERSION = 1


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of prompt tokens shared by several sequences, prefilled once."""

    id: int
    parent: int  # enclosing segment id, -1 at the top level
    start: int  # token offset of the segment inside every member's prompt
    length: int  # tokens, a positive multiple of the block size
    first: int  # order position of the first member request
    count: int  # member requests (order positions first .. first + count - 1)
    sequences: int  # member sequences (sum of n over member requests)


@dataclass(frozen=True, slots=True)
class PlanSettings:
    block_size: int = 16  # KV block size in tokens; shared segments are whole blocks
    sharing: Sharing = "multi"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise UsageError(f"block_size must be a power of two >= 1, got {self.block_size}")
        check("sharing", self.sharing, Sharing)


@dataclass(frozen=True, slots=True)
class PlanStats:
    """Counts over sequences (a request with n samples is n). est_kv_peak_tokens assumes groups run
    one after another: the largest group's shared chain (counted once) plus, per sequence, its private
    prompt tail and max_tokens of output."""

    requests: int  # valid requests planned
    sequences: int  # requests x n
    errors: int  # input lines that got error records
    logical_prefill_tokens: int  # sum over sequences of prompt length
    physical_prefill_tokens: int  # tokens actually prefilled (each shared segment once)
    saving_ratio: float  # 1 - physical / logical
    groups: int  # distinct deepest segments + unshared requests
    mean_sharing_degree: float  # mean sequences per segment (0 when there are none)
    max_depth: int  # deepest segment nesting (0 when nothing is shared)
    est_kv_peak_tokens: int  # KV of the largest group with its ancestors, groups run one after another


@dataclass(frozen=True, slots=True)
class Plan:
    version: int
    model: str
    fingerprint: str  # input file + tokenizer (+ settings); run --plan refuses a mismatch
    settings: PlanSettings
    segments: tuple[Segment, ...]
    order: tuple[int, ...]  # request indices (into the valid, tokenized requests) in execution order
    leaf: tuple[int, ...]  # per order position: deepest segment id, -1 if none
    stats: PlanStats

    def chain(self, position: int) -> tuple[int, ...]:
        """Segment ids of the request at order `position`, outermost first."""
        out: list[int] = []
        s = self.leaf[position]
        while s >= 0:
            out.append(s)
            s = self.segments[s].parent
        return tuple(reversed(out))


class PlanMismatchError(ValueError):
    """A plan made for other data, another tokenizer or other settings than this run's."""


@dataclass(frozen=True, slots=True)
class TreeNode:
    """One segment for display, with the first of its children in execution order."""

    segment: Segment
    children: tuple[TreeNode, ...]
    hidden: int  # child segments not shown (past the limit or the depth)


def build_plan(
    tokens: TokenArrays, max_tokens: np.ndarray, n: np.ndarray, settings: PlanSettings, *,
    model: str, fingerprint: str, errors: int,
) -> Plan:
    """Plan the valid requests `tokens` (request i = prompt i) with their `max_tokens[i]` and `n[i]`."""
    max_tokens = per_prompt(max_tokens, "max_tokens", len(tokens))
    if errors < 0:
        raise ValueError(f"errors must be >= 0, got {errors}")
    n = per_prompt(n, "n", len(tokens))
    tree = build_tree(tokens, n, settings.block_size, settings.sharing)
    lengths = tokens.lengths
    first, order = _layout(tree, lengths, max_tokens, n)
    perm = np.lexsort((tree.depth, first))  # [S] new id -> tree id: by first position, parents first
    new_id = np.empty(len(perm), np.int64)
    new_id[perm] = np.arange(len(perm))
    segments = tuple(map(Segment, range(len(perm)), *(a.tolist() for a in (
        _remap(tree.parent[perm], new_id), tree.start[perm], tree.length[perm], first[perm], tree.requests[perm], tree.sequences[perm]))))
    leaf = _remap(tree.leaf[order], new_id)  # [R] deepest segment by order position
    stats = _stats(tree, lengths, max_tokens, n, errors)
    return Plan(PLAN_VERSION, model, fingerprint, settings, segments, tuple(order.tolist()), tuple(leaf.tolist()), stats)


def _remap(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`table[ids]`, keeping -1 (none) as -1."""
    out = np.full(len(ids), -1, np.int64)
    out[ids >= 0] = table[ids[ids >= 0]]
    return out


def _subtree_totals(tree: PrefixTree, lengths: np.ndarray, max_tokens: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per request and per segment subtree: expected output tokens, physical prompt tokens, min request index."""
    req_out = (max_tokens * n).astype(np.float64)  # [R]
    req_phys = (n * (lengths - tree.shared)).astype(np.float64)  # [R]
    has = tree.leaf >= 0
    size = tree.num_segments
    seg_out = np.bincount(tree.leaf[has], weights=req_out[has], minlength=size)  # [S]
    seg_phys = tree.length + np.bincount(tree.leaf[has], weights=req_phys[has], minlength=size)  # [S]
    seg_min = np.full(size, len(lengths), np.int64)  # [S]
    np.minimum.at(seg_min, tree.leaf[has], np.flatnonzero(has))
    for d in range(int(tree.depth.max(initial=0)), 1, -1):
        s = np.flatnonzero(tree.depth == d)
        np.add.at(seg_out, tree.parent[s], seg_out[s])
        np.add.at(seg_phys, tree.parent[s], seg_phys[s])
        np.minimum.at(seg_min, tree.parent[s], seg_min[s])
    return np.concatenate([seg_out, req_out]), np.concatenate([seg_phys, req_phys]), np.concatenate([seg_min, np.arange(len(lengths))])


def _layout(tree: PrefixTree, lengths: np.ndarray, max_tokens: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth-first execution order: (first order position of each segment [S], request index per position [R]).

    Items are the S segments then the R requests (a request is a leaf under its deepest segment).
    """
    size, num = tree.num_segments, len(lengths)
    out, phys, tie = _subtree_totals(tree, lengths, max_tokens, n)
    ratio = out / np.maximum(phys, 1.0)  # [S + R]
    up = np.concatenate([tree.parent, tree.leaf])  # [S + R] enclosing segment, -1 at the top
    width = np.concatenate([tree.requests, np.ones(num, np.int64)])  # [S + R] requests under the item
    level = np.concatenate([tree.depth, np.maximum(_remap(tree.leaf, tree.depth) + 1, 1)])  # [S + R]; unshared: 1
    by = np.lexsort((tie, -ratio, up))  # [S + R] siblings together, best ratio first
    before = np.cumsum(width[by]) - width[by]  # [S + R] requests laid out before each item, globally
    new_group = np.ones(len(by), bool)  # [S + R] first item of each sibling run
    new_group[1:] = up[by][1:] != up[by][:-1]
    heads = np.flatnonzero(new_group)  # [sibling runs]
    offset = np.empty(size + num, np.int64)  # [S + R] position relative to the parent's first, then absolute
    offset[by] = before - np.repeat(before[heads], np.diff(np.append(heads, size + num)))
    for d in range(2, int(level.max(initial=1)) + 1):
        items = np.flatnonzero(level == d)
        offset[items] += offset[up[items]]  # parents (level d - 1) already hold absolute positions
    order = np.empty(num, np.int64)
    order[offset[size:]] = np.arange(num)
    return offset[:size], order


def _stats(tree: PrefixTree, lengths: np.ndarray, max_tokens: np.ndarray, n: np.ndarray, errors: int) -> PlanStats:
    """Plan statistics. est_kv_peak_tokens: groups (a deepest segment with the requests that end
    there, or one unshared request) run one after another, so the peak is the largest group's
    ancestor chain (start + length of its deepest segment, counted once) plus, per sequence, its
    private prompt tail and max_tokens of output."""
    logical = int((n * lengths).sum())
    private = n * (lengths - tree.shared)  # [R]
    physical = int(tree.length.sum() + private.sum())
    has = tree.leaf >= 0
    leaves = np.unique(tree.leaf[has])  # [groups with a segment]
    group_kv = np.bincount(tree.leaf[has], weights=(private + n * max_tokens)[has], minlength=tree.num_segments)  # [S]
    group_kv[leaves] += (tree.start + tree.length)[leaves]
    alone_kv = (private + n * max_tokens)[~has]  # [unshared]
    return PlanStats(
        requests=len(lengths), sequences=int(n.sum()), errors=errors,
        logical_prefill_tokens=logical, physical_prefill_tokens=physical,
        saving_ratio=1.0 - physical / logical if logical else 0.0,
        groups=len(leaves) + int((~has).sum()),
        mean_sharing_degree=float(tree.sequences.mean()) if tree.num_segments else 0.0,
        max_depth=int(tree.depth.max(initial=0)),
        est_kv_peak_tokens=int(max(group_kv.max(initial=0), alone_kv.max(initial=0))),
    )


def check_fingerprint(plan: Plan, fingerprint: str) -> None:
    """Refuse a plan made for other data, tokenizer or settings."""
    if plan.fingerprint != fingerprint:
        raise PlanMismatchError(f"plan fingerprint {plan.fingerprint!r} does not match this input's {fingerprint!r}")


_SEGMENT_COLUMNS = ("parent", "start", "length", "first", "count", "sequences")
_KEYS = {"version", "model", "fingerprint", "settings", "segments", "order", "leaf", "stats"}


def plan_to_json(plan: Plan) -> bytes:
    """Compact JSON: segments as columns (the id is the index), no token ids."""
    columns = {c: [getattr(s, c) for s in plan.segments] for c in _SEGMENT_COLUMNS}
    return orjson.dumps({
        "version": plan.version, "model": plan.model, "fingerprint": plan.fingerprint,
        "settings": asdict(plan.settings), "segments": columns, "order": plan.order, "leaf": plan.leaf,
        "stats": asdict(plan.stats),
    })


def plan_from_json(data: bytes) -> Plan:
    """Read a plan file; ValueError names what is wrong with a malformed or other-version file."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"plan file is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"plan file must hold a JSON object, got {type(doc).__name__}")
    if doc.get("version") != PLAN_VERSION:
        raise ValueError(f"plan file version {doc.get('version')!r} is not supported (expected {PLAN_VERSION})")
    if set(doc) != _KEYS:
        raise ValueError(f"plan file keys must be {sorted(_KEYS)}, got {sorted(doc)}")
    for key in ("model", "fingerprint"):
        if not isinstance(doc[key], str):
            raise ValueError(f"plan file {key} must be a string, got {doc[key]!r}")
    settings = _record(PlanSettings, doc["settings"], "settings")
    stats = _record(PlanStats, doc["stats"], "stats")
    if not isinstance(doc["segments"], dict) or set(doc["segments"]) != set(_SEGMENT_COLUMNS):
        raise ValueError(f"plan file segments must be an object with columns {list(_SEGMENT_COLUMNS)}")
    cols = [_ints(doc["segments"][c], f"segments.{c}") for c in _SEGMENT_COLUMNS]
    order, leaf = _ints(doc["order"], "order"), _ints(doc["leaf"], "leaf")
    _check_shape(cols, order, leaf, stats)
    segments = tuple(map(Segment, range(len(cols[0])), *(c.tolist() for c in cols)))
    return Plan(PLAN_VERSION, doc["model"], doc["fingerprint"], settings, segments, tuple(order.tolist()), tuple(leaf.tolist()), stats)


def _record(cls: type, value: object, name: str):
    """Build a settings/stats dataclass from a JSON object, field types checked exactly."""
    names = [f.name for f in fields(cls)]
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        raise ValueError(f"plan file {name} must be an object with fields {names}, got {value!r}")
    for f in fields(cls):
        kind = {"int": int, "float": float, "str": str, "Sharing": str}[f.type]  # PlanSettings checks the value
        if type(value[f.name]) is not kind:
            raise ValueError(f"plan file {name}.{f.name} must be {f.type}, got {value[f.name]!r}")
    return cls(**value)


def _ints(value: object, name: str) -> np.ndarray:
    if not isinstance(value, list) or not all(type(v) is int and -(2**62) < v < 2**62 for v in value):
        raise ValueError(f"plan file {name} must be a list of integers")
    return np.array(value, dtype=np.int64)


def _check_shape(cols: list[np.ndarray], order: np.ndarray, leaf: np.ndarray, stats: PlanStats) -> None:
    """The structural invariants the engine relies on, checked on the loaded columns."""
    parent, start, length, first, count, _ = cols
    size, num = len(parent), len(order)
    problems = [
        (any(len(c) != size for c in cols), "segment columns differ in length"),
        (num != stats.requests or len(leaf) != num, f"order and leaf must both hold {stats.requests} requests"),
        (not np.array_equal(np.sort(order), np.arange(num)), "order is not a permutation of the requests"),
        (bool(((parent < -1) | (parent >= np.arange(size))).any()), "a segment's parent must come before it"),
        (bool(((length <= 0) | (start < 0)).any()), "segment lengths must be positive and starts >= 0"),
        (bool(((first < 0) | (count < 1) | (first + count > num)).any()), "segment members fall outside the order"),
        (bool(((leaf < -1) | (leaf >= size)).any()), "leaf names a segment that does not exist"),
    ]
    for bad, message in problems:
        if bad:
            raise ValueError(f"plan file is malformed: {message}")


def top_segments(plan: Plan, limit: int = 10, depth: int = 3) -> tuple[tuple[TreeNode, ...], int]:
    """The first `limit` top-level segments in execution order, each with up to `limit` children per
    level down to `depth` levels; returns (nodes, top-level segments left out). Pure data for display."""
    children: list[list[int]] = [[] for _ in plan.segments]
    tops: list[int] = []
    for s in plan.segments:  # ids follow execution order, so children lists come out in order
        (children[s.parent] if s.parent >= 0 else tops).append(s.id)

    def view(seg: int, level: int) -> TreeNode:
        kids = children[seg] if level < depth else []
        shown = tuple(view(k, level + 1) for k in kids[:limit])
        return TreeNode(plan.segments[seg], shown, len(children[seg]) - len(shown))

    return tuple(view(s, 1) for s in tops[:limit]), max(len(tops) - limit, 0)
