"""Model FLOPs and model-FLOPs utilisation (MFU) against the matmul peak measured in the same run.

Formula (stated in RESULTS.md too): FLOPs = 2 * body * (C + O) + 2 * head * O + attn * P, where body is
every weight of the model except the token embedding and the LM head, head = vocab x hidden (the
LM-head matmul, tied or not), C = prompt tokens the engine computed (not served from a prefix cache or
shared segment), O = output tokens, attn = 4 * layers * heads * head_dim (QK^T and PV for one query
and one key), and P = the workload's (query, key) pairs with every shared prefix computed once: each
distinct prompt prefix's last position sees its own length of keys, each output token the prompt and
the outputs before it. P is the same for every engine (useful work, not what an engine recomputes),
so MFU compares with the physical limit; padding is never counted.
Invariant: parameter counts come from the safetensors headers, never from loading the weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight")
HEAD_SUFFIXES = ("lm_head.weight",)


@dataclass(frozen=True, slots=True)
class ModelSize:
    body: int  # parameters applied once per computed token
    head: int  # vocab x hidden: the LM-head matmul, applied once per output token
    attention: int = 0  # FLOPs of one (query, key) pair over all layers: 4 * layers * heads * head_dim

    def flops(self, computed_prompt_tokens: int, output_tokens: int, attention_pairs: int = 0) -> float:
        return (2.0 * self.body * (computed_prompt_tokens + output_tokens) + 2.0 * self.head * output_tokens
                + float(self.attention) * attention_pairs)


def attention_pairs(prompts: list[np.ndarray], outputs: list[int]) -> int:
    """(query, key) pairs of the workload with each shared prefix computed once (see the module docstring).

    Position p of a prompt sees p + 1 keys; over the distinct prefixes that is
    sum_r len_r (len_r + 1) / 2 minus, for neighbours in sorted order, lcp (lcp + 1) / 2."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i].tolist())
    total = sum(int(len(p)) * (int(len(p)) + 1) // 2 for p in prompts)
    for a, b in zip(order, order[1:]):
        x, y = prompts[a], prompts[b]
        n = min(len(x), len(y))
        differ = np.nonzero(x[:n] != y[:n])[0]
        lcp = int(differ[0]) if len(differ) else n
        total -= lcp * (lcp + 1) // 2
    for p, out in zip(prompts, outputs):
        total += out * len(p) + out * (out + 1) // 2
    return total


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {name: meta["shape"] for name, meta in header.items() if name != "__metadata__"}


def model_size(model_dir: Path) -> ModelSize:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes |= safetensors_shapes(f)
    body = 0
    for name, shape in shapes.items():
        if not name.endswith(EMBED_SUFFIXES + HEAD_SUFFIXES):
            numel = 1
            for d in shape:
                numel *= d
            body += numel
    config = json.loads((model_dir / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return ModelSize(body=body, head=config["vocab_size"] * config["hidden_size"],
                     attention=4 * config["num_hidden_layers"] * heads * head_dim)


def mfu(size: ModelSize, computed_prompt_tokens: int, output_tokens: int, seconds: float, peak_gflops: float,
        attention_pairs: int = 0) -> float:
    if seconds <= 0 or peak_gflops <= 0:
        raise ValueError(f"mfu needs positive seconds and peak, got {seconds}, {peak_gflops}")
    return size.flops(computed_prompt_tokens, output_tokens, attention_pairs) / seconds / (peak_gflops * 1e9)
