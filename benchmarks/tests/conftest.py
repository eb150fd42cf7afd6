"""Fixtures: a tiny model directory (config + safetensors header) and fake engines as scripts."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

# A stand-in for `batchllm run`: writes one output line per input line and the metrics file.
# FAKE_MODE=fail exits 1 with a message; FAKE_MODE=hang starts a grandchild, then sleeps forever.
# With `--compile off` (the eager path) it reports a second more of generation: 2.5 s instead of 1.5 s.
# Pooled lines get pooled answers: an embedding [1, prompt length] per input, relevance 0.5 per document.
FAKE_CLI = r'''#!{python}
import json, os, subprocess, sys, time
args = sys.argv[1:]
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "fail":
    sys.exit("batchllm: no module named batchcli.cli (fake)")
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.environ["FAKE_PIDFILE"], "w").write(str(child.pid))
    time.sleep(600)
src, out, metrics = args[1], args[args.index("-o") + 1], args[args.index("--metrics") + 1]
rows = [json.loads(l) for l in open(src) if l.strip()]

def answer(r):
    if "input" in r:
        return {{"id": r["id"], "embeddings": [[1.0, float(len(p))] for p in r["input"]]}}
    if "body" in r:
        docs = range(len(r["body"]["documents"]))
        return {{"custom_id": r["custom_id"], "response": {{"body": {{"results": [
            {{"index": i, "relevance_score": 0.5}} for i in docs]}}}}}}
    return {{"id": r["id"], "text": "x" * r["max_tokens"]}}

def tokens(r):
    documents = r.get("body", {{}}).get("documents", ())
    return len(r.get("prompt_token_ids", ())) + sum(map(len, r.get("input", ()))) + 100 * len(documents)

with open(out, "w") as f:
    for r in rows:
        f.write(json.dumps(answer(r)) + "\n")
prompt = sum(map(tokens, rows))
eager = "--compile" in args and args[args.index("--compile") + 1] == "off"
json.dump({{"wall_s": 3.0 if eager else 2.0, "model_load_s": 0.5, "tokenizer_load_s": 0.25, "prompt_tokens": prompt,
           "completion_tokens": sum(r.get("max_tokens", 0) for r in rows), "cached_tokens": prompt // 2,
           "saving_ratio": 0.5, "steps": 7, "preemptions": 0, "peak_kv_bytes": 2**20, "argv": args}},
          open(metrics, "w"))
'''


@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    exe = tmp_path / "batchllm"
    exe.write_text(FAKE_CLI.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """Shapes only: 2 layers of a hidden-8 Llama, tied embeddings (vocab 50)."""
    d = tmp_path / "model"
    d.mkdir()
    cfg = {"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    tensors = {"model.embed_tokens.weight": torch.zeros(50, 8), "model.norm.weight": torch.zeros(8)}
    for i in range(2):
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.zeros(8, 8)
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = torch.zeros(16, 8)
    save_file(tensors, d / "model.safetensors")
    return d
