"""Model resolution: clear errors for what is missing, and an atomic default-model conversion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchcli import model_store
from batchcli.errors import ModelNotFoundError


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        model_store.resolve_model(str(tmp_path))


def test_unknown_hub_id_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        model_store.resolve_model("nobody/no-such-model")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        model_store.resolve_model(str(tmp_path / "x.gguf"))


def test_env_var_names_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHLLM_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        model_store.resolve_model(None)


def test_missing_default_names_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(model_store, "DEFAULT_DIST", "no-such-distribution-xyz")
    with pytest.raises(ModelNotFoundError) as info:
        model_store.resolve_model(None)
    assert str(tmp_path) in str(info.value) and "no-such-distribution-xyz" in str(info.value)


@pytest.mark.slow
def test_conversion_killed_midway_leaves_nothing_half_done(tmp_path):
    env = {**os.environ, "BATCHLLM_CACHE": str(tmp_path)}
    code = "from batchcli.model_store import default_model_dir; print(default_model_dir())"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    parent = tmp_path / "models"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (parent.is_dir() and any(parent.iterdir())):
        time.sleep(0.05)
    time.sleep(1.0)  # let it get into the middle of the conversion
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    target = parent / model_store.DEFAULT_MODEL
    assert not target.exists(), "a killed conversion must not leave the target directory"
    # a later run converts again and the result loads
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == target
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert [p.name for p in parent.iterdir()] == [model_store.DEFAULT_MODEL]  # no temporary left over


def test_pending_conversion_is_announced_only_when_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHLLM_CACHE", str(tmp_path))
    monkeypatch.delenv("BATCHLLM_MODEL", raising=False)
    assert "converting the default model" in model_store.pending_conversion(None)
    (tmp_path / "models" / model_store.DEFAULT_MODEL).mkdir(parents=True)
    assert model_store.pending_conversion(None) is None
    assert model_store.pending_conversion(str(tmp_path)) is None  # a directory needs no conversion
