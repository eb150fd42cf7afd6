"""Tiny random-weight Hugging Face checkpoints on disk, for tests that need a real model directory.

Every parameter is randomised (norm weights around 1, biases non-zero), so a test that compares with
transformers fails if any weight, bias or norm were ignored or misplaced.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PretrainedConfig, PreTrainedModel,
    Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
)

TINY = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
)
KINDS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def tiny_config(kind: str = "llama", **overrides: object) -> PretrainedConfig:
    """A 2-layer, hidden-64, 4-head (2 KV heads, head_dim 16), vocab-128 config of the given family."""
    config_cls, _ = KINDS[kind]
    fields = {**TINY, **overrides}
    if kind == "mistral":
        fields.setdefault("sliding_window", None)
    return config_cls(**fields)


def randomize_(model: PreTrainedModel, seed: int) -> None:
    """Fill every parameter: matrices ~N(0, 0.1^2), norms ~1 + N(0, 0.1^2), biases ~N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.1
            p.copy_(noise + 1.0 if "norm" in name else noise)


def build_tiny_model(kind: str = "llama", seed: int = 0, **overrides: object) -> PreTrainedModel:
    """A float32 transformers model of `kind` with random weights, in eval mode."""
    _, model_cls = KINDS[kind]
    model = model_cls(tiny_config(kind, **overrides))
    randomize_(model, seed)
    return model.eval()


def save_tiny_checkpoint(directory: Path, kind: str = "llama", seed: int = 0, max_shard_size: str | None = None,
                         **overrides: object) -> PreTrainedModel:
    """Write a tiny random checkpoint (safetensors) into `directory`; returns the transformers model.

    `max_shard_size` (e.g. "20KB") makes a sharded checkpoint with `model.safetensors.index.json`.
    """
    model = build_tiny_model(kind, seed, **overrides)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return model


def save_tiny_with_tokenizer(directory: Path, tokenizer_dir: Path) -> Path:
    """A tiny random Llama at `directory` with the tokenizer (and chat template) of `tokenizer_dir`:
    fast, but a real tokenizer path for CLI-level tests."""
    import shutil

    save_tiny_checkpoint(directory, "llama", seed=3, vocab_size=49152, max_position_embeddings=4096,
                         eos_token_id=2, bos_token_id=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, directory / name)
    return directory
