"""The house's arrows, checked in fresh interpreters: what each side may load of the other.

The engine's input is planning's plain types; it must not load the front half's requests, tokenizer,
grammar compiler, formats, files or model store, and planning must never load the engine (its types
travel into the engine, never the other way).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRONT_HALF = ("batchcli.requests", "batchcli.results", "batchcli.model_store", "batchcli.pipeline", "batchcli.job",
              "batchcli.cli", "batchcli.planning.tokenize", "batchcli.planning.grammars", "batchcli.formats",
              "batchcli.io")


def loaded_after(module: str) -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('batchcli'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_the_engine_loads_nothing_of_the_front_half():
    loaded = loaded_after("batchcli.engine.engine")
    assert "batchcli.planning.shard" in loaded  # it does load planning's plain types
    assert [m for m in loaded if m.startswith(FRONT_HALF)] == []


@pytest.mark.parametrize("module", ["batchcli.planning.tokenize", "batchcli.planning.grammars",
                                    "batchcli.planning.plan", "batchcli.planning.sharding", "batchcli.planning.shard"])
def test_planning_never_loads_the_engine(module):
    assert [m for m in loaded_after(module) if m.startswith("batchcli.engine")] == []
