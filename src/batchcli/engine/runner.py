"""The model runner: turns one StepBatch into tensors, runs the model, returns the final hidden states
the engine asked for.

Invariant: `StepHidden.sampled` rows follow the order of the step's chunks with `sample=True` (one row
each, its last computed position); `StepHidden.whole[k]` holds every row of chunk `whole_chunks[k]`.
Logits are made only by `logits`, for the rows the caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from batchcli.engine.attention.metadata import build_metadata
from batchcli.engine.model import CausalLM
from batchcli.engine.step import StepBatch


@dataclass(frozen=True, slots=True)
class StepHidden:
    """Final hidden states (after the final norm, in the model's dtype) of one step."""

    sampled: torch.Tensor  # [N, D]: the last row of each sample=True chunk, in chunk order
    whole: tuple[torch.Tensor, ...]  # per chunk asked for whole: its rows [q_len, D]


class ModelRunner:
    def __init__(self, model: CausalLM, kv: torch.Tensor, block_size: int, device: torch.device) -> None:
        self.model = model
        self.kv = kv  # [L, 2, num_blocks, block_size, n_kv, head_dim]
        self.block_size = block_size
        self.device = device

    @torch.inference_mode()
    def run(self, step: StepBatch, whole_chunks: Sequence[int] = ()) -> StepHidden:
        """Compute every chunk of the step; hand back the sampled rows and the chunks asked for whole."""
        meta = build_metadata(step, self.block_size, self.device)
        ids = np.fromiter((t for c in step.chunks for t in c.token_ids), dtype=np.int64, count=meta.num_tokens)
        q_start, q_len = meta.host.q_start, meta.host.q_len
        first_pos = np.fromiter((c.start_pos for c in step.chunks), dtype=np.int64, count=len(step.chunks))
        chunk_of_row = np.repeat(np.arange(len(step.chunks)), q_len)  # [T]
        positions = np.arange(meta.num_tokens) - q_start[chunk_of_row] + first_pos[chunk_of_row]  # [T]
        sample_rows = np.array([q_start[i + 1] - 1 for i, c in enumerate(step.chunks) if c.sample], dtype=np.int64)
        whole_rows = [np.arange(q_start[i], q_start[i + 1], dtype=np.int64) for i in whole_chunks]
        rows = np.concatenate([sample_rows, *whole_rows])  # [N + sum of whole chunks' q_len]
        hidden = self.model.hidden(
            torch.from_numpy(ids).to(self.device),
            torch.from_numpy(positions).to(self.device),
            self.kv,
            meta,
            torch.from_numpy(rows).to(self.device),
        )  # [len(rows), D]
        sampled, *whole = hidden.split([len(sample_rows), *(len(r) for r in whole_rows)])
        return StepHidden(sampled, tuple(whole))

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] of final hidden states [N, D]."""
        return self.model.logits(hidden)
