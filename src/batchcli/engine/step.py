"""The typed object the scheduler hands the runner each step (pure Python ints, no torch).

Invariants of a `StepBatch`:
- every sequence's shared segments (`SeqChunk.segments`) are fully computed in an earlier step;
- `SeqChunk.block_ids` covers private positions `0 .. private_len - 1` (this step's tokens included);
- a chunk's tokens sit at absolute positions `start_pos .. start_pos + len(token_ids) - 1`;
- a chunk's owner is a request sample (`SeqOwner`, the only chunks that sample) or a shared
  segment's prefill (`SegOwner`): two id spaces, never mixed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SegmentView:
    """A shared segment as attention sees it: `length` tokens of whole KV blocks, read-only."""

    seg_id: int
    length: int  # tokens; == len(block_ids) * block_size
    block_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SeqOwner:
    """A chunk computed for a request sample: the scheduler's sequence id."""

    seq_id: int


@dataclass(frozen=True, slots=True)
class SegOwner:
    """A chunk computed for a shared segment's own prefill: the plan's segment id."""

    seg_id: int


ChunkOwner = SeqOwner | SegOwner


@dataclass(frozen=True, slots=True)
class SeqChunk:
    """Tokens of one sequence to compute in this step.

    A sequence is either a request sample (prompt tail + generated tokens) or a shared segment's
    own prefill job; both attend to their ancestor segments, then causally to their private KV.
    """

    owner: ChunkOwner
    token_ids: tuple[int, ...]  # tokens to compute now (a prefill chunk, or the last sampled token)
    start_pos: int  # absolute position of token_ids[0]
    private_start: int  # absolute position where private KV begins (= sum of ancestor segment lengths)
    block_ids: tuple[int, ...]  # private KV blocks, in order
    segments: tuple[int, ...]  # ancestor segment ids, outermost first
    sample: bool  # sample a next token from the last computed position (SeqOwner chunks only)

    @property
    def private_len(self) -> int:
        """Private KV length after this step: history + this chunk."""
        return self.start_pos + len(self.token_ids) - self.private_start


@dataclass(frozen=True, slots=True)
class StepBatch:
    """One step's work: decodes and prefill chunks, with the shared segments they attend to."""

    chunks: tuple[SeqChunk, ...]
    segments: dict[int, SegmentView]  # every segment id named by a chunk

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)
