"""Per-sequence scheduler state, and its construction from a Plan: request samples and segment jobs.

A request with n samples is n `Sequence`s (ids 0 .. S-1, by request, sample 0 first). Each attends
to a chain of shared segments (outermost first) and then to its own private KV. A shared segment is
itself a prefill job (`SegmentJob`, known by the plan's segment id) over `length` tokens of whole
blocks, attending to its own ancestor chain. The two id spaces never mix: chunks carry a typed owner
(`SeqOwner` or `SegOwner`, see step.py).

Samples of one request share its segments (the plan's prefix tree counts a request with n samples
as n sequences, so even one request's prompt is a segment when n > 1); only the last, partial block
is private per sample.

Invariants: a sequence's chain is contiguous from position 0 (each segment starts where its parent
ends) and ends strictly before the prompt does, so every sequence computes at least its last prompt
token itself and can sample from it. A segment's `users` is the number of unfinished sequences whose
chain holds it, the one reference count of shared KV: at 0 its blocks are freed for good.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from batchcli.engine.step import SegOwner, SeqChunk, SeqOwner
from batchcli.errors import KVBudgetError
from batchcli.planning.plan import Plan
from batchcli.params import SamplingParams
from batchcli.planning.token_arrays import TokenArrays


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # not admitted yet, or preempted (private KV dropped, recomputed on re-admission)
    RUNNING = "running"
    FINISHED = "finished"


class SegStatus(enum.Enum):
    UNALLOCATED = "unallocated"  # no blocks: not needed yet, or evicted as a last resort
    BUILDING = "building"  # blocks allocated, prefill job running
    READY = "ready"  # fully computed in a reported step; members may attend to it
    FREED = "freed"  # last user finished; never used again


@dataclass(slots=True)
class Sequence:
    """One sample of one request. Private positions count from `private_start`."""

    seq_id: int
    request: int  # request index (into the prompts)
    sample: int  # 0 .. n - 1
    prompt_len: int
    private_start: int  # absolute position where private KV begins (sum of chain lengths)
    chain: tuple[int, ...]  # segment ids, outermost first
    group: int  # the plan's leaf segment of the request (-1: unshared), for output-length estimates
    max_tokens: int
    generated: list[int] = field(default_factory=list)
    computed: int = 0  # private tokens whose KV is computed (or scheduled in the pending step)
    blocks: list[int] = field(default_factory=list)  # private KV blocks, in order
    expected: int = 0  # expected output tokens, fixed at admission (for memory reservations)
    status: SeqStatus = SeqStatus.WAITING
    admitted_at: int = -1  # the scheduler's admission tick: prefills are placed in this order
    owner: SeqOwner = field(init=False)  # what its chunks carry

    def __post_init__(self) -> None:
        self.owner = SeqOwner(self.seq_id)

    @property
    def known(self) -> int:
        """Private tokens known so far: prompt tail + generated tokens."""
        return self.prompt_len + len(self.generated) - self.private_start

    @property
    def decoding(self) -> bool:
        return bool(self.generated) and self.known - self.computed == 1

    def next_chunk(self, prompts: TokenArrays, n: int) -> SeqChunk:
        """Its next `n` known tokens (prompt tail, then generated) as a chunk; they count as computed
        from now. The caller has given it the blocks they need."""
        pos = self.private_start + self.computed
        self.computed += n
        prompt_len = self.prompt_len
        if pos >= prompt_len:  # generated tokens only: every decode
            tokens = tuple(self.generated[pos - prompt_len : pos + n - prompt_len])
        else:
            tokens = tuple(prompts[self.request][pos : min(pos + n, prompt_len)].tolist()
                           + self.generated[: max(0, pos + n - prompt_len)])
        return SeqChunk(self.owner, tokens, pos, self.private_start, tuple(self.blocks), self.chain,
                        self.computed == self.known)


@dataclass(slots=True)
class SegmentJob:
    """A shared segment: its KV blocks and the prefill job that fills them."""

    seg_id: int
    start: int  # absolute position of its first token
    length: int  # tokens, whole blocks
    chain: tuple[int, ...]  # ancestor segment ids, outermost first
    source: int  # a request whose prompt holds the segment's tokens
    users: int = 0
    blocks: tuple[int, ...] = ()
    computed: int = 0
    status: SegStatus = SegStatus.UNALLOCATED
    admitted_at: int = -1  # the scheduler's tick when its blocks were allocated (see Sequence)
    owner: SegOwner = field(init=False)  # what its prefill chunks carry

    def __post_init__(self) -> None:
        self.owner = SegOwner(self.seg_id)

    def next_chunk(self, prompts: TokenArrays, n: int, block_size: int) -> SeqChunk:
        """Its next `n` tokens as a chunk (never sampled); they count as computed from now."""
        pos = self.start + self.computed
        self.computed += n
        tokens = tuple(prompts[self.source][pos : pos + n].tolist())
        blocks = self.blocks[: -(-self.computed // block_size)]
        return SeqChunk(self.owner, tokens, pos, self.start, blocks, self.chain, sample=False)


@dataclass(frozen=True, slots=True)
class Jobs:
    """Everything the scheduler will run: request samples by seq id, segment jobs by segment id."""

    seqs: tuple[Sequence, ...]  # by seq_id
    segments: tuple[SegmentJob, ...]  # by segment id, as in the plan
    first_seq: tuple[int, ...]  # per request index: seq_id of sample 0

    def seq(self, seq_id: int) -> Sequence:
        if not 0 <= seq_id < len(self.seqs):
            raise ValueError(f"no request sequence with id {seq_id}")
        return self.seqs[seq_id]

    def seq_ids(self, request: int) -> range:
        end = self.first_seq[request + 1] if request + 1 < len(self.first_seq) else len(self.seqs)
        return range(self.first_seq[request], end)


def build_jobs(plan: Plan, prompts_len: np.ndarray, params: list[SamplingParams], block_size: int) -> Jobs:
    """Sequences and segment jobs for a plan; raises ValueError if plan and prompts disagree."""
    num = len(prompts_len)
    if len(params) != num or sorted(plan.order) != list(range(num)) or len(plan.leaf) != num:
        raise ValueError(f"plan covers {len(plan.order)} requests, prompts {num}, params {len(params)}: they must match")
    segs = tuple(SegmentJob(s.id, s.start, s.length, _ancestors(plan, s.parent), source=-1) for s in plan.segments)
    for i, s in enumerate(segs):
        _check_segment(i, s, segs, block_size)
    chains: list[tuple[int, ...]] = [()] * num
    groups = [-1] * num
    for pos, r in enumerate(plan.order):
        chains[r], groups[r] = plan.chain(pos), plan.leaf[pos]
    seqs: list[Sequence] = []
    first_seq = []
    for r in range(num):
        n, length, chain = params[r].n, int(prompts_len[r]), chains[r]
        private_start = segs[chain[-1]].start + segs[chain[-1]].length if chain else 0
        if private_start >= length:
            raise ValueError(f"request {r} has {length} prompt tokens; its plan segments cover {private_start}")
        first_seq.append(len(seqs))
        for j in range(n):
            seqs.append(Sequence(len(seqs), r, j, length, private_start, chain, groups[r], params[r].max_tokens))
        for g in chain:
            segs[g].users += n
            if segs[g].source < 0:
                segs[g].source = r
    return Jobs(tuple(seqs), segs, tuple(first_seq))


def shared_blocks(seq: Sequence, segs: tuple[SegmentJob, ...], block_size: int) -> int:
    """KV blocks of every segment in the sequence's chain."""
    return sum(segs[g].length for g in seq.chain) // block_size


def too_small(seq: Sequence, segs: tuple[SegmentJob, ...], block_size: int, num_blocks: int,
              private_blocks: int) -> KVBudgetError:
    """The error for a pool of `num_blocks` that cannot hold `seq` alone with `private_blocks` of its own."""
    return KVBudgetError(
        f"KV budget too small: {num_blocks} blocks of {block_size} tokens cannot hold sequence {seq.seq_id} "
        f"(request {seq.request}) alone: it needs {shared_blocks(seq, segs, block_size)} shared + {private_blocks} "
        f"private blocks; raise the KV budget or lower max_tokens"
    )


def _ancestors(plan: Plan, seg: int) -> tuple[int, ...]:
    """Segment ids from the outermost down to `seg` included (empty for -1)."""
    out = []
    while seg != -1:
        out.append(seg)
        seg = plan.segments[seg].parent
    return tuple(reversed(out))


def _check_segment(index: int, s: SegmentJob, segs: tuple[SegmentJob, ...], block_size: int) -> None:
    if s.seg_id != index:
        raise ValueError(f"plan segment at index {index} has id {s.seg_id}; ids must be indices")
    parent_end = segs[s.chain[-1]].start + segs[s.chain[-1]].length if s.chain else 0
    if s.start != parent_end or s.length <= 0 or s.length % block_size:
        raise ValueError(
            f"plan segment {s.seg_id} (start {s.start}, length {s.length}) must start at its parent's end "
            f"{parent_end} and be a positive multiple of block size {block_size}"
        )
