"""The attention backend registry: one list of names for the config, the CLI help, device checks and
the model loader, importable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from batchcli.engine.attention import ATTENTION, BACKENDS, attention_help, make_backend, resolve_backend
from batchcli.engine.attention.backend import AttnShape
from batchcli.engine.attention.gather_backend import GatherAttention
from batchcli.engine.attention.torch_backend import TorchAttention
from batchcli.engine.config import EngineConfig


def test_auto_picks_the_device_backend_and_names_pass_through(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert (resolve_backend("auto", "cuda"), resolve_backend("auto", "cpu")) == ("triton", "torch")
    assert [resolve_backend(n, "cpu") for n in ("torch", "gather", "reference")] == ["torch", "gather", "reference"]
    with pytest.raises(ValueError, match=r"'triton' needs a CUDA device \(or TRITON_INTERPRET=1 for tests\)"):
        resolve_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"


def test_unknown_backends_are_refused_and_native_loads_with_autos_eager_backend():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'; choose one of auto, native, torch, triton, gather, reference"):
        resolve_backend("flash", "cpu")
    assert resolve_backend("native", "cpu") == resolve_backend("auto", "cpu") == "torch"


def test_config_and_help_take_their_names_from_the_registry():
    assert ATTENTION == ("auto", *BACKENDS)
    assert attention_help() == ("Attention backend: auto, native (fused CPU ops), torch, triton (CUDA) or gather "
                                "(no prefix decomposition; ablation).")
    for name in ATTENTION:
        assert EngineConfig(attention=name).attention == name
    with pytest.raises(ValueError, match="attention: must be one of auto, native, torch, triton, gather, reference"):
        EngineConfig(attention="flash")


def test_make_backend_builds_each_eager_backend_for_the_shape():
    shape = AttnShape(num_heads=6, num_kv_heads=2, dtype=torch.bfloat16, head_dim=64)
    torch_backend = make_backend("torch", shape)
    assert isinstance(torch_backend, TorchAttention) and torch_backend.dtype == torch.bfloat16
    assert isinstance(make_backend("gather", shape), GatherAttention)
    with pytest.raises(ValueError, match="unknown attention backend 'native'"):
        make_backend("native", shape)
    with pytest.raises(ValueError, match="not a multiple"):
        AttnShape(num_heads=5, num_kv_heads=2, dtype=torch.float32, head_dim=64)


def test_the_registry_and_the_config_import_no_torch():
    code = "import sys, batchcli.engine.attention, batchcli.engine.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
