"""A model directory's config.json read without transformers, with the values transformers would fill.

Why: AutoConfig imports ~1.3 s of transformers model code, a quarter of a cold start. Invariant: for
the supported families, `read_hf_config(dir)` exposes the same values `AutoConfig.from_pretrained(dir)`
does for every field the model code reads (tests/test_hf_config.py checks this against transformers,
for configs written by transformers 5 and by older releases).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from batchcli.errors import CheckpointError

# transformers' defaults for fields a config.json may leave out, per family
_COMMON = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu", "rope_theta": 10000.0,
           "sliding_window": None}
# The sizes of the network: transformers would fill in a 7B model's, which no checkpoint that lacks
# them holds, so a config without them is refused by name instead.
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_FAMILY = {
    "llama": {"max_position_embeddings": 2048},
    "mistral": {"max_position_embeddings": 131072, "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768},
    "qwen3": {"max_position_embeddings": 32768, "head_dim": 128},
}


def read_hf_config(directory: Path, model_type: str) -> SimpleNamespace:
    """config.json of `directory` (whose `model_type` is supported) as transformers would present it."""
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    missing = [k for k in _REQUIRED if raw.get(k) is None]
    if missing:
        raise CheckpointError(f"{directory / 'config.json'} lacks {', '.join(missing)}: not a complete model config")
    fields = {**_COMMON, **_FAMILY[model_type], **{k: v for k, v in raw.items() if v is not None or k == "sliding_window"}}
    if model_type in ("qwen2", "qwen3") and not raw.get("use_sliding_window", False):
        fields["sliding_window"] = None  # Qwen configs carry a window size that is off unless enabled
    if fields.get("num_key_value_heads") is None:
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    rope = raw.get("rope_parameters")
    if rope is None:  # written before transformers 5: rope_theta beside an optional rope_scaling
        rope = dict(raw.get("rope_scaling") or {})
        rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
        rope["rope_theta"] = fields["rope_theta"]
    fields["rope_parameters"] = rope
    return SimpleNamespace(**fields)
