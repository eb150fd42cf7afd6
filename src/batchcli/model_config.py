"""What a model directory's config files say, read without transformers and checked against what our
model code implements: the architecture (`ArchConfig`, the one model config type) and the
end-of-sequence ids.

Both halves read it: the tokenizer for the context length and vocabulary, the engine to build the
model. Why not AutoConfig: it imports ~1.3 s of transformers model code, a quarter of a cold start.
Invariant: for the supported families, the values read here are those `AutoConfig.from_pretrained(dir)`
gives for every field the model code reads (tests/test_hf_config.py checks this against transformers,
for configs written by transformers 5 and by older releases).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from batchcli.errors import BatchError, CheckpointError, ModelNotFoundError, UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "max_position_embeddings")  # derived buffers some old exports saved


def check_model_type(model_type: object) -> None:
    """Raise `UnsupportedModelError` naming the supported types unless `model_type` is one."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """Rotary embedding: plain (`default`), position-interpolated (`linear`) or Llama 3.1 (`llama3`)."""

    theta: float
    kind: str = "default"
    factor: float = 1.0  # linear, llama3
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position: int = 0  # llama3

    def __post_init__(self) -> None:
        if self.kind not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope type {self.kind!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.theta <= 0 or self.factor <= 0:
            raise ValueError(f"rope theta and factor must be > 0, got theta={self.theta}, factor={self.factor}")
        if self.kind == "llama3" and (self.original_max_position <= 0 or self.high_freq_factor <= self.low_freq_factor):
            raise ValueError(f"llama3 rope needs original_max_position > 0 and high > low freq factor: {self}")


@dataclass(frozen=True, slots=True)
class ArchConfig:
    """The architecture numbers the forward pass needs, read once from the checkpoint's config."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeConfig
    qk_norm: bool  # Qwen3: RMSNorm over each q/k head before RoPE
    tie_word_embeddings: bool

    def __post_init__(self) -> None:
        check_model_type(self.model_type)
        sizes = (self.hidden_size, self.intermediate_size, self.num_layers, self.num_heads, self.num_kv_heads,
                 self.head_dim, self.vocab_size, self.max_position_embeddings)
        if min(sizes) <= 0:
            raise ValueError(f"architecture sizes must be > 0: {self}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")


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


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


_ROPE_KEYS = {
    "default": ("rope_theta",),
    "linear": ("rope_theta", "factor"),
    "llama3": ("rope_theta", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _rope_config(config: object) -> RopeConfig:
    params = dict(getattr(config, "rope_parameters", None) or {})
    kind = params.get("rope_type", "default")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError(f"partial_rotary_factor {params['partial_rotary_factor']} is not supported")
    missing = [k for k in _ROPE_KEYS.get(kind, ()) if k not in params]
    if missing:
        raise CheckpointError(f"{kind} rope parameters lack {missing}: {params}")
    return RopeConfig(
        theta=float(params.get("rope_theta", 0.0)), kind=kind, factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(params.get("original_max_position_embeddings", 0)),
    )


def arch_from_config(config: object) -> ArchConfig:
    """Check a transformers config against what the model code implements and keep its numbers."""
    check_model_type(config.model_type)
    if config.hidden_act != "silu":
        raise UnsupportedModelError(f"hidden_act {config.hidden_act!r} is not supported; only 'silu' is")
    window = getattr(config, "sliding_window", None)
    if window is not None and window < config.max_position_embeddings:
        raise UnsupportedModelError(
            f"sliding_window {window} < max_position_embeddings {config.max_position_embeddings}: "
            "sliding-window attention is not supported"
        )
    return ArchConfig(
        model_type=config.model_type, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        vocab_size=config.vocab_size, max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=float(config.rms_norm_eps), rope=_rope_config(config), qk_norm=config.model_type == "qwen3",
        tie_word_embeddings=bool(config.tie_word_embeddings),
    )


def load_config(path: str | Path) -> ArchConfig:
    """Read and check a local model directory's config (offline, no remote code)."""
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"no model at {str(directory)!r}: config.json not found")
    raw = read_json(directory / "config.json")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{directory / 'config.json'} does not hold a JSON object")
    check_model_type(raw.get("model_type"))
    config = read_hf_config(directory, raw["model_type"])
    bad = [f"{k}={getattr(config, k, None)!r}" for k in _INT_FIELDS if type(getattr(config, k, None)) is not int]
    if bad:
        raise CheckpointError(f"{directory / 'config.json'}: {', '.join(bad)}: must be integers")
    try:
        return arch_from_config(config)
    except BatchError:  # already says what is unsupported or wrong
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # another field of the wrong type or range
        raise CheckpointError(f"{directory / 'config.json'} is not a usable config: {exc}") from None


def eos_token_ids(path: str | Path) -> tuple[int, ...]:
    """End-of-sequence ids: config.json's, then generation_config.json's, without duplicates."""
    directory = Path(path)
    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        if not (directory / name).is_file():
            continue
        value = read_json(directory / name).get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if token is None:
                continue
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise CheckpointError(f"{directory / name}: eos_token_id {value!r} is not a token id")
            if token not in ids:
                ids.append(token)
    return tuple(ids)
