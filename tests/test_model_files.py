"""Broken model files and caches are one line each, and the front half and the engine agree on facts."""

from __future__ import annotations

import shutil
import sys

import orjson
import pytest

from batchcli import model_store
from batchcli.cli import app
from test_cli import lines, model, runner, write_input  # noqa: F401 - model is a fixture


@pytest.fixture
def copy(tmp_path, model):
    directory = tmp_path / "m"
    shutil.copytree(model, directory)
    return directory


def run(src, model_arg, *args):
    return runner.invoke(app, ["run", src, "-o", "-", "--model", str(model_arg), "--quiet", *args])


def one_line_error(res, *needles):
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert all(n in res.stderr for n in needles), res.stderr


@pytest.mark.parametrize("damage, needle", [
    (lambda c: c.write_text(c.read_text()[:40]), "cannot read"),
    (lambda c: c.write_text(orjson.dumps({**orjson.loads(c.read_bytes()), "hidden_size": "64"}).decode()), "hidden_size='64': must be integers"),
    (lambda c: c.write_text("[1, 2]"), "JSON object"),
])
def test_a_broken_config_is_one_line(tmp_path, copy, damage, needle):
    damage(copy / "config.json")
    one_line_error(run(write_input(tmp_path / "in.jsonl", [{"prompt": "x"}]), copy), needle)


def test_a_corrupt_tokenizer_is_one_line(tmp_path, copy):
    (copy / "tokenizer.json").write_text('{"truncated": ')
    one_line_error(run(write_input(tmp_path / "in.jsonl", [{"prompt": "x"}]), copy), "tokenizer")


def test_front_half_uses_the_engines_context_default(tmp_path, copy):
    config = orjson.loads((copy / "config.json").read_bytes())
    del config["max_position_embeddings"]  # Llama's default, 2048, applies to both halves
    (copy / "config.json").write_bytes(orjson.dumps(config))
    rows = [{"id": "long", "prompt_token_ids": [5] * 2049, "max_tokens": 1}, {"id": "ok", "prompt_token_ids": [5], "max_tokens": 1}]
    res = run(write_input(tmp_path / "in.jsonl", rows), copy, "--block-size", "64")
    assert res.exit_code == 3, res.stderr
    out = {r["id"]: r for r in lines(res.stdout)}
    assert out["long"]["error"]["code"] == "context_length_exceeded" and "2048" in out["long"]["error"]["message"]
    assert "text" in out["ok"]


def test_a_junk_gguf_and_an_unusable_cache_are_one_line(tmp_path, monkeypatch):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF this is not a model" * 10)
    src = write_input(tmp_path / "in.jsonl", [{"prompt": "x"}])
    monkeypatch.setenv("BATCHLLM_CACHE", str(tmp_path / "cache"))
    one_line_error(run(src, junk), "junk.gguf", "GGUF")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("BATCHLLM_CACHE", str(tmp_path / "file"))
    one_line_error(run(src, junk), "cannot write the model cache", "BATCHLLM_CACHE")


def test_quiet_silences_a_first_use_conversion(tmp_path, monkeypatch, capfd):
    def noisy(gguf, work):
        print("Converting and de-quantizing GGUF tensors: 100%", file=sys.stderr)
        (work / "config.json").write_text("{}")

    monkeypatch.setattr(model_store, "_convert_into", noisy)
    monkeypatch.setenv("BATCHLLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"y")
    model_store.resolve_model(str(tmp_path / "a.gguf"), quiet=True)
    assert capfd.readouterr().err == ""
    model_store.resolve_model(str(tmp_path / "b.gguf"))
    assert "de-quantizing" in capfd.readouterr().err
