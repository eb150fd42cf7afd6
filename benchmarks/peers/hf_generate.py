"""Peer: Hugging Face transformers `generate` with padded batches, as a plain user would run it.

Run as a worker: `python -m benchmarks.peers.hf_generate --model DIR --dtype bfloat16 [--device cuda]`
(protocol in worker.py). Batches are consecutive prompts in input order, left-padded, greedy; EOS is
ignored by min_new_tokens = max_new_tokens, and a batch decodes to its largest max_tokens (each output is then
cut to its own max_tokens, as `generate` cannot stop rows early). Option "batch_size": an int, or
"auto" to time one batch at each of 8/16/32 first (reported as calibrate_s, outside gen_s).
Invariant: no prefix reuse across requests (cached_tokens is always 0); only the model's own KV
cache inside one `generate` call.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.peers.worker import Generation, serve

BATCH_SIZES = (8, 16, 32)


class HFEngine:
    def __init__(self, model_dir: str, dtype: str, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), device_map=device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def _batch(self, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [B, width]
        mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, width]
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        new = max(max_tokens)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=new, min_new_tokens=new,
                do_sample=False, pad_token_id=self.pad_id,
            )  # [B, width + new]
        return [out[row, width : width + m].tolist() for row, m in enumerate(max_tokens)]

    def _calibrate(self, prompts: list[list[int]], max_tokens: list[int]) -> int:
        """Batch size in BATCH_SIZES with the best tokens/s on one batch from the workload's start."""
        best, best_rate = BATCH_SIZES[0], 0.0
        for bs in BATCH_SIZES:
            head, head_max = prompts[:bs], max_tokens[:bs]
            t0 = time.perf_counter()
            self._batch(head, head_max)
            rate = (sum(len(p) for p in head) + sum(head_max)) / (time.perf_counter() - t0)
            if rate > best_rate:
                best, best_rate = bs, rate
            if bs >= len(prompts):
                break
        return best

    def generate(self, prompts: list[list[int]], max_tokens: list[int], options: dict) -> Generation:
        size = options.get("batch_size", "auto")
        calibrate_s = 0.0
        if size == "auto":
            t0 = time.perf_counter()
            size = self._calibrate(prompts, max_tokens)
            calibrate_s = time.perf_counter() - t0
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive int or 'auto', got {size!r}")
        outputs: list[list[int]] = []
        for start in range(0, len(prompts), size):
            outputs += self._batch(prompts[start : start + size], max_tokens[start : start + size])
        texts = self.tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return Generation(outputs, texts, cached_tokens=0, extra={"batch_size": size, "calibrate_s": calibrate_s})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), required=True)
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    serve(lambda: HFEngine(args.model, args.dtype, args.device))


if __name__ == "__main__":
    main()
