"""Model FLOPs and model-FLOPs utilisation (MFU) against the matmul peak measured in the same run.

Formula (stated in RESULTS.md too): FLOPs = 2 * body * (C + O) + 2 * head * O, where body is every
weight of the model except the token embedding and the LM head, head = vocab x hidden (the LM-head
matmul, tied or not), C = prompt tokens the engine computed (not served from a prefix cache or
shared segment), O = output tokens.
Attention-score FLOPs and padding are not counted: MFU measures useful model work only.
Invariant: parameter counts come from the safetensors headers, never from loading the weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight")
HEAD_SUFFIXES = ("lm_head.weight",)


@dataclass(frozen=True, slots=True)
class ModelSize:
    body: int  # parameters applied once per computed token
    head: int  # vocab x hidden: the LM-head matmul, applied once per output token

    def flops(self, computed_prompt_tokens: int, output_tokens: int) -> float:
        return 2.0 * self.body * (computed_prompt_tokens + output_tokens) + 2.0 * self.head * output_tokens


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
    return ModelSize(body=body, head=config["vocab_size"] * config["hidden_size"])


def mfu(size: ModelSize, computed_prompt_tokens: int, output_tokens: int, seconds: float, peak_gflops: float) -> float:
    if seconds <= 0 or peak_gflops <= 0:
        raise ValueError(f"mfu needs positive seconds and peak, got {seconds}, {peak_gflops}")
    return size.flops(computed_prompt_tokens, output_tokens) / seconds / (peak_gflops * 1e9)
