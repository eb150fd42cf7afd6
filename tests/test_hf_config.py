"""config.json read without transformers gives the architecture AutoConfig gives, old formats included."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from batchcli.model_config import arch_from_config, load_config
from helpers_models import tiny_config

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
CASES = {
    "llama-minimal": dict(model_type="llama", **BASE),
    "llama3-v4-format": dict(model_type="llama", **BASE, num_key_value_heads=2, max_position_embeddings=131072,
                             rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama-linear-old-key": dict(model_type="llama", **BASE, max_position_embeddings=4096,
                                 rope_scaling={"type": "linear", "factor": 2.0}),
    "mistral-no-window": dict(model_type="mistral", **BASE, num_key_value_heads=1, sliding_window=None,
                              max_position_embeddings=32768, rope_theta=1e6),
    "qwen2-window-off": dict(model_type="qwen2", **BASE, num_key_value_heads=2, use_sliding_window=False,
                             sliding_window=4096, max_position_embeddings=32768, rope_theta=1e6),
    "qwen3-no-head-dim": dict(model_type="qwen3", **BASE, num_key_value_heads=2, max_position_embeddings=40960),
}


def _write(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("name", list(CASES))
def test_matches_autoconfig_on_handwritten_configs(tmp_path, name):
    directory = _write(tmp_path, CASES[name])
    assert load_config(directory) == arch_from_config(AutoConfig.from_pretrained(directory))


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3"])
def test_matches_autoconfig_on_configs_transformers_writes(tmp_path, kind):
    tiny_config(kind).save_pretrained(tmp_path)
    assert load_config(tmp_path) == arch_from_config(AutoConfig.from_pretrained(tmp_path))


def test_mistral_default_window_is_refused_like_autoconfig(tmp_path):
    from batchcli.errors import UnsupportedModelError

    directory = _write(tmp_path, dict(model_type="mistral", **BASE))  # no sliding_window key: 4096 by default
    with pytest.raises(UnsupportedModelError, match="sliding_window 4096"):
        arch_from_config(AutoConfig.from_pretrained(directory))
    with pytest.raises(UnsupportedModelError, match="sliding_window 4096"):
        load_config(directory)
