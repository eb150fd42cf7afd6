"""The end-to-end part of benchmarks.gpu_check: `batchllm run` on a Llama-3-8B-shaped model on one GPU.

The model is made on the device with random weights (bf16, transformers' own initialisation) and
saved as a Hugging Face directory beside the SmolLM2 tokenizer's files: the workload is token ids
below SmolLM2's vocabulary (benchmarks.synth), so that tokenizer only decodes the outputs, and ids it
lacks decode to nothing; no 16 GB checkpoint and no Llama tokenizer has to travel. Runs: batchllm on
the paper workload scaled to `Scale.big_groups` contexts, and on `Scale.small_groups` contexts
batchllm, batchllm `--sharing off` and transformers `generate`, each timed by the benchmark harness's
own peers. Invariant: every run reads the same files and writes its result into the report as soon
as it ends; a failed or timed-out run is a row with its error, never the end of the part.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from benchmarks import synth
from benchmarks.flops import mfu, model_size
from benchmarks.peers.base import Job, RunOutcome
from benchmarks.peers.batchllm import BatchllmPeer
from benchmarks.peers.remote import hf_peer
from benchmarks.workloads import Bench, build

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False)
TINY = dict(LLAMA3_8B, vocab_size=synth.VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass(frozen=True, slots=True)
class Scale:
    """The paper's shape (contexts x 16 questions, prefix ~10x the question) at a size that fits the budget."""

    model: dict
    dtype: str
    big_groups: int  # contexts of the batchllm-only run
    small_groups: int  # contexts of the three-way comparison
    prefix: int  # context tokens
    degree: int  # questions per context
    suffix: int  # question tokens
    output: int  # output tokens per request
    hf_batch: int  # transformers generate's batch size


GPU = Scale(LLAMA3_8B, "bfloat16", big_groups=128, small_groups=32, prefix=1024, degree=16, suffix=96, output=64,
            hf_batch=128)
DRY = Scale(TINY, "float32", big_groups=2, small_groups=1, prefix=32, degree=4, suffix=16, output=4, hf_batch=4)


def make_model(directory: Path, scale: Scale, tokenizer: Path, device: torch.device) -> Path:
    """A random-weight Llama of `scale.model`'s shapes, made on `device`, saved as an HF directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    missing = [n for n in TOKENIZER_FILES[:2] if not (tokenizer / n).is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer directory {tokenizer} lacks {missing} (see README, GPU)")
    directory.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, scale.dtype)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype at once: an 8B model in fp32 first would be 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**scale.model))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(directory, max_shard_size="4GB")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, directory / name)
    return directory


class GpuMemoryPeak:
    """Peak GPU memory in use on the device (all processes) over a `with` block, above its level at the
    start, sampled every 50 ms: what a run in another process took, its CUDA context included."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_bytes = device, None
        self._stop = threading.Event()

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def _watch(self, base: int) -> None:
        while not self._stop.wait(0.05):
            self.peak_bytes = max(self.peak_bytes or 0, self._used() - base)

    def __enter__(self) -> GpuMemoryPeak:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._watch, args=(self._used(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self._stop.set()
            self._thread.join()


def benches(scale: Scale) -> tuple[Bench, Bench]:
    """(the big batchllm-only workload, the small three-way one): the same shape, different context counts."""
    def bench(groups: int) -> Bench:
        shape = (groups, scale.prefix, scale.degree, scale.suffix, scale.output)
        return Bench(f"paper-{groups * scale.degree}", "{} contexts of {} tokens x {} questions of {}, {} output "
                     "tokens, shuffled".format(*shape), partial(synth.shared_prefix, *shape))
    return bench(scale.big_groups), bench(scale.small_groups)


def _row(outcome: RunOutcome, built, size, peak_tflops: float, memory: GpuMemoryPeak) -> dict:
    row = asdict(outcome) | {"requests": built.requests,
                             "peak_gpu_gib": None if memory.peak_bytes is None else memory.peak_bytes / 2**30}
    if outcome.ok and outcome.gen_s > 0:
        tokens = outcome.prompt_tokens + outcome.completion_tokens
        row |= {"tok_s": tokens / outcome.gen_s, "out_tok_s": outcome.completion_tokens / outcome.gen_s,
                "mfu": mfu(size, outcome.computed_prompt_tokens, outcome.completion_tokens, outcome.gen_s,
                           peak_tflops * 1e3, built.attention_pairs)}
    return row


def run(out: Path, scale: Scale, tokenizer: Path, device: torch.device, peak_tflops: float, deadline: float,
        save: Callable[[dict], None]) -> dict:
    """Make the model and workloads, then run every engine while time is left; `save(result)` after each step."""
    result: dict = {"scale": {k: v for k, v in asdict(scale).items() if k != "model"}, "model_config": scale.model,
                    "peak_tflops": peak_tflops, "runs": []}
    t0 = time.perf_counter()
    model_dir = make_model(out / "model", scale, tokenizer, device)
    size = model_size(model_dir)
    result["model"] = {"dir": str(model_dir), "make_s": time.perf_counter() - t0, "params_body": size.body,
                       "params_head": size.head}
    big, small = (build(b, out / "inputs") for b in benches(scale))
    result["workloads"] = {b.bench.name: {"title": b.bench.title, "requests": b.requests, "prompt_tokens": b.prompt_tokens,
                                          "shared_tokens": b.shared_tokens, "output_tokens": b.output_tokens}
                           for b in (big, small)}
    save(result)
    batchllm = BatchllmPeer(model_dir, scale.dtype, Path(sys.executable).with_name("batchllm"))
    hf = hf_peer(model_dir, scale.dtype, out / "logs", scale.hf_batch, device=str(device))
    plan = [(small, batchllm, ""), (small, batchllm, "sharing-off"), (small, hf, ""), (big, batchllm, "")]
    try:
        for built, peer, variant in plan:
            left = deadline - time.monotonic()
            name = f"{peer.name}{' ' + variant if variant else ''}"
            if left < 10:
                result["runs"].append({"peer": name, "workload": built.bench.name, "error": "not run: out of time"})
                continue
            flags = ("--sharing", "off") if variant else ()
            job = Job(built.bench.name, built.path, out / "runs" / built.bench.name, built.max_tokens, None, variant,
                      flags, timeout_s=left)
            job.out_dir.mkdir(parents=True, exist_ok=True)
            if peer is hf:
                hf.startup_timeout_s = left  # its model load counts against the part's time too
            with GpuMemoryPeak(device) as memory:
                outcome = peer.run(job)
            if peer is hf:
                hf.close()  # its model and cache leave the GPU before the next run is measured
            result["runs"].append(_row(replace(outcome, peer=name), built, size, peak_tflops, memory))
            print(f"e2e: {name} on {built.bench.name}: {outcome.error or f'{outcome.gen_s:.1f} s'}", flush=True)
            save(result)
    finally:
        hf.close()
    return result
