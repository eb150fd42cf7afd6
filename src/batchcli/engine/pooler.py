"""Pooled outputs of prefill-only requests (batchcli.pooling_params), computed inside the engine loop.

Last-token pooling and logits need only the row a sequence "samples" from. Mean pooling needs every
prompt token's final hidden state; a shared segment's rows do not depend on what follows them
(attention is causal), so each segment's row sum is taken once, when the segment is prefilled, and
kept until its last mean-pooled member has finished; a member's mean is then
(sum over its chain's segment sums + the sum over its private rows) / prompt length.

Invariants: a sum belongs to one owner (a segment id or a sequence id) and covers exactly the rows
computed for it since its first position: a chunk that starts at its owner's first position (first
prefill, or recomputation after a preemption or an eviction) starts the sum again. Sums are float32.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from batchcli.engine.sequence import Sequence as Seq
from batchcli.engine.step import SegOwner, SeqOwner, StepBatch
from batchcli.pooling_params import PoolingParams


class Pooler:
    def __init__(self, tasks: Sequence[PoolingParams | None], sequences: Sequence[Seq]) -> None:
        """`tasks`: per request (shard position), its pooling (None: generation); `sequences`: all of them."""
        self._tasks = tasks
        summing = [s for s in sequences if tasks[s.request] is not None and tasks[s.request].sums]
        self._summing_seqs = {s.seq_id for s in summing}
        self._members = Counter(g for s in summing for g in s.chain)  # segment -> unfinished summing members
        self._seg_sums: dict[int, torch.Tensor] = {}  # float32 [D] per segment
        self._seq_sums: dict[int, torch.Tensor] = {}  # float32 [D] per sequence

    def task(self, request: int) -> PoolingParams | None:
        return self._tasks[request]

    def whole_chunks(self, step: StepBatch) -> list[int]:
        """Indices of the step's chunks whose every row must come back (their owner keeps a sum)."""
        return [i for i, c in enumerate(step.chunks) if self._sums_for(c.owner)]

    def _sums_for(self, owner: SeqOwner | SegOwner) -> bool:
        if isinstance(owner, SegOwner):
            return self._members[owner.seg_id] > 0
        return owner.seq_id in self._summing_seqs

    def add_rows(self, step: StepBatch, whole_chunks: Sequence[int], rows: Sequence[torch.Tensor]) -> None:
        """Add the rows [q_len, D] of each chunk of `whole_chunks` to its owner's sum."""
        for i, hidden in zip(whole_chunks, rows, strict=True):
            chunk = step.chunks[i]
            sums, key = ((self._seg_sums, chunk.owner.seg_id) if isinstance(chunk.owner, SegOwner)
                         else (self._seq_sums, chunk.owner.seq_id))
            part = hidden.float().sum(0)  # [D]
            if chunk.start_pos == chunk.private_start or key not in sums:
                sums[key] = part
            else:
                sums[key] += part

    def finish(self, seq: Seq, last: torch.Tensor, logits: torch.Tensor | None) -> np.ndarray:
        """The pooled values of `seq` (a pooled request's one sequence), whose last prompt row is `last`
        [D] and, for kind "logits", whose logits row is `logits` [V]; its sums are dropped."""
        task = self._tasks[seq.request]
        assert task is not None, f"request {seq.request} is a generation request, not a pooled one"
        if task.kind == "logits":
            assert logits is not None, f"request {seq.request} pools logits but got none"
            return logits[list(task.token_ids)].float().cpu().numpy()  # [k]
        if task.kind == "mean":
            total = self._seq_sums.pop(seq.seq_id)  # [D]
            for g in seq.chain:
                total = total + self._seg_sums[g]
                self._members[g] -= 1
                if self._members[g] == 0:
                    del self._seg_sums[g]
            self._summing_seqs.discard(seq.seq_id)
            vector = total / seq.prompt_len  # [D]
        else:
            vector = last.float()  # [D]
        if task.dimensions is not None:
            vector = vector[: task.dimensions]  # [dimensions]
        if task.normalize:
            vector = F.normalize(vector, p=2.0, dim=-1)
        return vector.cpu().numpy()
