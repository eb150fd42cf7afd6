"""The model runner: turns one StepBatch into tensors, runs the model, returns the sampling logits.

Invariant: rows of the returned logits follow the order of the step's chunks with `sample=True`.
"""

from __future__ import annotations

import numpy as np
import torch

from batchcli.engine.attention.metadata import build_metadata
from batchcli.engine.model import CausalLM
from batchcli.engine.step import StepBatch


class ModelRunner:
    def __init__(self, model: CausalLM, kv: torch.Tensor, block_size: int, device: torch.device) -> None:
        self.model = model
        self.kv = kv  # [L, 2, num_blocks, block_size, n_kv, head_dim]
        self.block_size = block_size
        self.device = device

    @torch.inference_mode()
    def run(self, step: StepBatch) -> torch.Tensor:
        """Compute every chunk of the step; float32 logits [num_sampling_chunks, vocab]."""
        meta = build_metadata(step, self.block_size, self.device)
        ids = np.fromiter((t for c in step.chunks for t in c.token_ids), dtype=np.int64, count=meta.num_tokens)
        q_start, q_len = meta.host.q_start, meta.host.q_len
        first_pos = np.fromiter((c.start_pos for c in step.chunks), dtype=np.int64, count=len(step.chunks))
        chunk_of_row = np.repeat(np.arange(len(step.chunks)), q_len)  # [T]
        positions = np.arange(meta.num_tokens) - q_start[chunk_of_row] + first_pos[chunk_of_row]  # [T]
        sample_rows = np.array([q_start[i + 1] - 1 for i, c in enumerate(step.chunks) if c.sample], dtype=np.int64)
        return self.model(
            torch.from_numpy(ids).to(self.device),
            torch.from_numpy(positions).to(self.device),
            self.kv,
            meta,
            torch.from_numpy(sample_rows).to(self.device),
        )
