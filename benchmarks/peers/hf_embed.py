"""Peer: transformers embeddings, as a user without batchllm would compute them.

`AutoModel` forward over right-padded batches of `batch_size` inputs in file order, each row's last
real token's hidden state (last-token pooling, as the default model's pooling is), normalised. Runs in
the harness's process: total_s counts the model load, gen_s the forward loop alone. The vectors go
to `transformers.npy` in corpus order, for the report to compare with batchllm's.
Invariant: a failure comes back as a RunOutcome with `error` set (peers.base), never as an exception.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.machine import CpuWindow
from benchmarks.peers.base import Job, RunOutcome, failed
from benchmarks.pooled import corpus_prompts


def embed(model, prompts: list[list[int]], batch_size: int) -> np.ndarray:
    """Normalised last-token hidden states [N, D] of the prompts, batch by batch."""
    import torch
    import torch.nn.functional as F

    vectors = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.zeros((len(batch), width), dtype=torch.long)  # [B, width], right-padded
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, width]
            for row, p in enumerate(batch):
                ids[row, : len(p)], mask[row, : len(p)] = torch.tensor(p), 1
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, width, D]
            last = hidden[torch.arange(len(batch)), mask.sum(1) - 1]  # [B, D]
            vectors.append(F.normalize(last.float(), dim=-1).numpy())
    return np.concatenate(vectors)


@dataclass
class HfEmbedPeer:
    model: Path
    dtype: str
    inputs: int  # the corpus prefix it embeds
    batch_size: int = 32
    name: str = "transformers-embed"

    def run(self, job: Job) -> RunOutcome:
        window, cpu0, t0 = CpuWindow(), time.process_time(), time.perf_counter()
        try:
            import torch
            from transformers import AutoModel

            prompts = corpus_prompts(job.path, self.inputs)
            model = AutoModel.from_pretrained(self.model, dtype=getattr(torch, self.dtype)).eval()
            started = time.perf_counter()
            vectors = embed(model, prompts, self.batch_size)
            gen = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - a peer reports its failure as a row, never raises
            return failed(self.name, job, f"{type(exc).__name__}: {exc}")
        out = job.out_dir / "transformers.npy"
        np.save(out, vectors)
        total = time.perf_counter() - t0
        tokens = sum(map(len, prompts))
        return RunOutcome(peer=self.name, workload=job.workload, variant=job.variant, total_s=total, gen_s=gen,
                          startup_s=total - gen, prompt_tokens=tokens, computed_prompt_tokens=tokens,
                          others_share=window.others_share(0.0), out_path=str(out),
                          extra={"batch_size": self.batch_size, "cpu_s": time.process_time() - cpu0})

    def close(self) -> None:
        """Nothing outlives a run: the model is dropped with it."""
