"""The step being built (chunks by owner under a token budget) and the counters sealed steps add to.

Invariant: `tokens` is the sum of the chunks' lengths, at most `budget`; preemption may take a chunk
back (`drop`), which returns its tokens to the budget. Decodes are remembered apart for the counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchcli.engine.step import ChunkOwner, SeqChunk


@dataclass(slots=True)
class SchedulerCounters:
    steps: int = 0
    preemptions: int = 0
    segment_evictions: int = 0  # last resort only: segments dropped so the last running sequence fits
    prefill_tokens: int = 0  # segment jobs, request prefills and recomputation
    decode_tokens: int = 0
    recomputed_tokens: int = 0  # computed tokens whose KV preemption threw away
    peak_blocks: int = 0


@dataclass(slots=True)
class StepBuilder:
    budget: int
    chunks: dict[ChunkOwner, SeqChunk] = field(default_factory=dict)  # by owner, in placement order
    tokens: int = 0
    decodes: set[ChunkOwner] = field(default_factory=set)  # owners whose chunk is a decode

    @property
    def left(self) -> int:
        return self.budget - self.tokens

    def add(self, chunk: SeqChunk, decode: bool = False) -> None:
        assert len(chunk.token_ids) <= self.left, f"chunk of {len(chunk.token_ids)} tokens over the budget"
        self.chunks[chunk.owner] = chunk
        self.tokens += len(chunk.token_ids)
        if decode:
            self.decodes.add(chunk.owner)

    def drop(self, owner: ChunkOwner) -> int:
        """Take an owner's chunk back, if it has one; return how many of its tokens were drafted."""
        chunk = self.chunks.pop(owner, None)
        if chunk is None:
            return 0
        self.decodes.discard(owner)
        self.tokens -= len(chunk.token_ids)
        return len(chunk.token_ids)

    def count_into(self, counters: SchedulerCounters) -> None:
        """Add this step, sealed as it stands, to the counters."""
        counters.steps += 1
        counters.decode_tokens += len(self.decodes)
        counters.prefill_tokens += self.tokens - len(self.decodes)
