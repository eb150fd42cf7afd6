"""Embedding lines (/v1/embeddings and the plain {"id", "input"} form): the body rules, the model's
pooling config, the fan-out into parts and the fan-in into one line, the rendering (validated by the
openai SDK's CreateEmbeddingResponse), and float32 vectors end to end equal to transformers' forward
+ the same pooling on the same weights and tokens, with and without prefix sharing.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from batchcli.cli import app
from batchcli.formats.output import render_pooled
from batchcli.io.reader import read_requests
from batchcli.model_tasks import ModelTasks, read_embedding
from batchcli.parts import LineJoiner, whole_lines
from batchcli.planning.token_arrays import TokenArrays
from batchcli.planning.tokenize import TokenizedRequests
from batchcli.pooling_params import PoolingParams
from batchcli.params import SamplingParams
from batchcli.requests import InputFormat, LineError
from batchcli.engine.events import Pooled, Refusal
from batchcli.results import Failure, PooledResult
from helpers_models import save_tiny_checkpoint, save_tiny_with_tokenizer
from helpers_openai import validate_openai_line

runner = CliRunner()


def _done(request, values, prompt_tokens: int, cached_tokens: int) -> PooledResult:
    """The front half's record of a pooled part the engine answered with `values`."""
    return PooledResult(request, Pooled(0, values, prompt_tokens, cached_tokens))
MEAN = PoolingParams("mean", normalize=True)
TASKS = ModelTasks(embed=MEAN, hidden_size=64, matryoshka=False, judge="no judge here")


def _line(custom_id: str, body: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def _read(tmp_path, *rows: dict, tasks: ModelTasks | None = TASKS) -> list:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return list(read_requests(path, SamplingParams(), tasks=tasks))


def test_each_input_is_one_part_of_its_line(tmp_path):
    items = _read(tmp_path, _line("a", {"input": ["x", "y", "z"], "user": "u1"}), _line("b", {"input": "w"}),
                  _line("c", {"input": [5, 6, 7]}), _line("d", {"input": [[5, 6], [7]], "encoding_format": "base64"}),
                  {"id": "p", "input": "plain"})
    assert [(r.id, r.part, r.line) for r in items] == [("a", 0, 1), ("a", 1, 1), ("a", 2, 1), ("b", 0, 2), ("c", 0, 3),
                                                       ("d", 0, 4), ("d", 1, 4), ("p", 0, 5)]
    assert [r.prompt for r in items[:3]] == ["x", "y", "z"] and items[4].prompt_token_ids == (5, 6, 7)
    assert [r.prompt_token_ids for r in items[5:7]] == [(5, 6), (7,)]
    assert all(r.pooling == MEAN and (r.params.max_tokens, r.params.n) == (1, 1) for r in items)
    assert [r.format for r in (items[0], items[-1])] == [InputFormat.OPENAI_EMBEDDINGS, InputFormat.EMBED]
    assert (items[0].echo.count, items[0].echo.single, items[3].echo.single) == (3, False, True)
    assert items[0].echo is items[2].echo and items[5].echo.encoding_format == "base64"
    assert items[0].custom_id == "a" and items[-1].custom_id is None


@pytest.mark.parametrize("body, code, words", [
    ({}, "missing_prompt", "body.input is required"),
    ({"input": []}, "invalid_type", "body.input must be"),
    ({"input": ["a", ""]}, "empty_prompt", "body.input[1]"),
    ({"input": ["a", [1]]}, "invalid_type", "body.input must be"),
    ({"input": [[1], []]}, "invalid_type", "non-empty token-id lists"),
    ({"input": ["a"] * 2049}, "invalid_value", "at most 2048"),
    ({"input": "a", "encoding_format": "int8"}, "invalid_value", "body.encoding_format"),
    ({"input": "a", "dimensions": 32}, "unsupported", "does not declare Matryoshka training"),
    ({"input": "a", "dimensions": "32"}, "invalid_type", "body.dimensions"),
    ({"input": "a", "truncate_prompt_tokens": 8}, "unknown_field", "body.truncate_prompt_tokens"),
    ({"input": "a", "model": "other"}, "model_not_found", "'other' is not served here"),
])
def test_bad_bodies_are_error_lines(tmp_path, body, code, words):
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps(_line("r", body)) + b"\n")
    (err,) = read_requests(path, SamplingParams(), served_model="smol", tasks=TASKS)
    assert isinstance(err, LineError) and err.code == code and words in err.message and err.custom_id == "r", err


def test_dimensions_need_a_matryoshka_model_and_renormalise(tmp_path):
    tasks = ModelTasks(embed=PoolingParams("last", normalize=False), hidden_size=64, matryoshka=True, judge="-")
    cut, full, big = _read(tmp_path, _line("a", {"input": "x", "dimensions": 16}), _line("b", {"input": "x", "dimensions": 64}),
                           _line("c", {"input": "x", "dimensions": 65}), tasks=tasks)
    assert cut.pooling == PoolingParams("last", normalize=True, dimensions=16)
    assert full.pooling == tasks.embed  # the whole vector: nothing to truncate
    assert big.code == "invalid_value" and "[1, 64]" in big.message


def test_a_model_that_does_not_embed_gives_its_reason(tmp_path):
    tasks = ModelTasks(embed="its modules include Dense", hidden_size=64, matryoshka=False, judge="-")
    (err,) = _read(tmp_path, _line("a", {"input": "x"}), tasks=tasks)
    assert err.code == "unsupported" and "does not embed: its modules include Dense" in err.message
    (plain,) = _read(tmp_path, {"id": "p", "input": "x", "max_tokens": 3})
    assert plain.code == "unknown_field" and "max_tokens" in plain.message


def _st_dir(tmp_path, pooling: dict | None, normalize: bool = True, extra: list | None = None, st: dict | None = None):
    if pooling is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        modules += [{"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}] * normalize
        modules += extra or []
        (tmp_path / "modules.json").write_text(json.dumps(modules))
        (tmp_path / "1_Pooling").mkdir(exist_ok=True)
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **pooling}))
    if st is not None:
        (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(st))
    return tmp_path


@pytest.mark.parametrize("pooling, normalize, extra, want", [
    (None, True, None, PoolingParams("last", normalize=True)),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, True, None, PoolingParams("mean", normalize=True)),
    ({"pooling_mode_lasttoken": True}, False, None, PoolingParams("last")),
    ({"pooling_mode_cls_token": True}, True, None, "cls pooling"),
    ({"pooling_mode_max_tokens": True}, True, None, "max pooling is not supported"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_lasttoken": True}, True, None, "pooling modes"),
    ({"pooling_mode_mean_tokens": True, "include_prompt": False}, True, None, "include_prompt false"),
    ({"pooling_mode_mean_tokens": True}, True, [{"path": "3_Dense", "type": "sentence_transformers.models.Dense"}],
     "include Dense"),
])
def test_the_sentence_transformers_config_decides_the_pooling(tmp_path, pooling, normalize, extra, want):
    got, matryoshka = read_embedding(_st_dir(tmp_path, pooling, normalize, extra))
    assert (got == want) if isinstance(want, PoolingParams) else (isinstance(got, str) and want in got), got
    assert matryoshka is False


def test_matryoshka_is_declared_in_config_sentence_transformers(tmp_path):
    assert read_embedding(_st_dir(tmp_path, None, st={"matryoshka_dimensions": [32, 64]}))[1] is True
    assert read_embedding(_st_dir(tmp_path, None, st={"prompts": {}}))[1] is False
    (tmp_path / "modules.json").write_text("[not json")
    assert "cannot be read" in read_embedding(tmp_path)[0]


def _parts(tmp_path, body: dict, values: list[np.ndarray]) -> list[PooledResult]:
    reqs = _read(tmp_path, _line("e", body))
    return [_done(r.without_prompt(), v, 3 + k, 2) for k, (r, v) in enumerate(zip(reqs, values))]


def test_rendered_lines_are_openai_embedding_lists(tmp_path):
    values = [np.array([0.5, -0.25, 1e-3], np.float32), np.array([1.0, 2.0, 3.0], np.float32)]
    line = render_pooled(_parts(tmp_path, {"input": ["a", "b"]}, values), model="smol")  # SDK-validated (conftest)
    body = line["response"]["body"]
    assert [d["embedding"] for d in body["data"]] == [v.tolist() for v in values]
    assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == "smol"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and line["custom_id"] == "e"
    coded = render_pooled(_parts(tmp_path, {"input": "a", "encoding_format": "base64"}, values[:1]), model="smol")
    raw = coded["response"]["body"]["data"][0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(raw), dtype="<f4"), values[0])
    validate_openai_line(coded)


def test_plain_lines_answer_embedding_or_embeddings(tmp_path):
    one, many = (_read(tmp_path, {"id": "p", "input": x}) for x in ("a", ["a", "b"]))
    v = np.array([0.5, 0.25], np.float32)
    single = render_pooled([_done(one[0], v, 4, 0)])
    assert single == {"id": "p", "embedding": [0.5, 0.25], "usage": {"prompt_tokens": 4, "total_tokens": 4, "cached_tokens": 0}}
    listed = render_pooled([_done(r, v, 4, 2) for r in many])
    assert listed["embeddings"] == [[0.5, 0.25]] * 2 and listed["usage"]["cached_tokens"] == 4


def test_a_line_is_joined_when_its_last_part_is_in_and_fails_once(tmp_path):
    a = _read(tmp_path, _line("a", {"input": ["x", "y", "z"]}))
    b = _read(tmp_path, _line("b", {"input": ["x", "y"]}))
    joiner = LineJoiner(lambda parts: {"parts": [p.request.part for p in parts]}, lambda e, fmt: {"error": e.message})
    v = np.zeros(2, np.float32)
    assert joiner.add(_done(a[2], v, 1, 0)) is None and joiner.add(_done(a[0], v, 1, 0)) is None
    assert joiner.add(_done(a[1], v, 1, 0)) == {"parts": [0, 1, 2]}
    assert joiner.add(Failure(b[1], Refusal(0, "kv_budget_exceeded", "too big"))) == {"error": "input 1: too big"}
    assert joiner.add(_done(b[0], v, 1, 0)) is None  # the line was answered by its error


def test_a_part_that_fails_to_encode_fails_its_whole_line(tmp_path):
    reqs = _read(tmp_path, _line("a", {"input": ["x", "y", "z"]}), _line("b", {"input": "w"}))
    ok = [r for r in reqs if r.part != 1 or r.id != "a"]
    errors = [LineError("a", 1, "context_length_exceeded", "input 1: too long", "a"),
              LineError("a", 1, "context_length_exceeded", "input 2: too long", "a")]
    batch = whole_lines(TokenizedRequests(ok, TokenArrays.from_lists([[1]] * len(ok)), errors))
    assert [(r.id, r.part) for r in batch.requests] == [("b", 0)] and len(batch.tokens) == 1
    assert [e.message for e in batch.errors] == ["input 1: too long"]


# ---- end to end, against transformers -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory, smol_dir):
    """A tiny random Llama with SmolLM2's tokenizer and a sentence-transformers mean + Normalize config."""
    directory = save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-embed"), smol_dir)
    _st_dir(directory, {"pooling_mode_mean_tokens": True}, st={"matryoshka_dimensions": [16, 32, 64]})
    return directory


def _hf_embed(model_dir, prompts: list[list[int]], dimensions: int | None = None) -> list[np.ndarray]:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            hidden = model(torch.tensor([ids])).last_hidden_state[0]  # [L, D]
            out.append(F.normalize(hidden.mean(0)[:dimensions], dim=-1).numpy())
    return out


@pytest.mark.parametrize("sharing", ["multi", "off"])
def test_embeddings_equal_transformers_with_and_without_sharing(tmp_path, tiny_embedder, sharing):
    from transformers import AutoTokenizer

    instruction = "Instruct: Given a question about animals, retrieve passages that answer it.\nQuery: "
    queries = [instruction + q for q in ("Do cats purr?", "How fast can a cheetah run?", "Why do dogs bark?")]
    rows = [_line("e1", {"input": queries}), _line("e2", {"input": queries[1], "dimensions": 32}),
            {"id": "p1", "input": [list(range(1, 10)) + [20], list(range(1, 10)) + [21]]},
            {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}}]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = runner.invoke(app, ["run", str(src), "-o", str(out), "--model", str(tiny_embedder), "--quiet",
                              "--dtype", "float32", "--sharing", sharing, "--block-size", "4", "--order", "input"])
    assert res.exit_code == 0, res.stderr
    e1, e2, p1, c1 = (orjson.loads(x) for x in out.read_bytes().splitlines())
    assert c1["response"]["body"]["choices"][0]["message"]["content"] is not None
    tok = AutoTokenizer.from_pretrained(tiny_embedder)
    ids = [tok(q)["input_ids"] for q in queries]
    want = _hf_embed(tiny_embedder, ids) + _hf_embed(tiny_embedder, [ids[1]], 32) + _hf_embed(tiny_embedder, [list(range(1, 10)) + [20], list(range(1, 10)) + [21]])
    got = [np.array(d["embedding"], np.float32) for d in e1["response"]["body"]["data"] + e2["response"]["body"]["data"]]
    got += [np.array(v, np.float32) for v in p1["embeddings"]]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.abs(g - w).max() <= 1e-5
        assert float(g @ w) / (np.linalg.norm(g) * np.linalg.norm(w)) >= 0.99999
    assert e1["response"]["body"]["usage"]["prompt_tokens"] == sum(map(len, ids))
    assert p1["usage"]["cached_tokens"] == (16 if sharing == "multi" else 0)  # 2 shared blocks of 4, per input


def test_resume_redoes_only_the_lines_not_written(tmp_path, tiny_embedder):
    rows = [_line(f"e{k}", {"input": [f"text {k} a", f"text {k} b"]}) for k in range(3)] + [{"id": "p", "input": "x"}]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    args = ["run", str(src), "-o", str(out), "--model", str(tiny_embedder), "--quiet", "--dtype", "float32", "--order", "input"]
    assert runner.invoke(app, args).exit_code == 0
    whole = out.read_bytes().splitlines()
    out.write_bytes(whole[0] + b"\n" + whole[1][: len(whole[1]) // 2])  # a run killed while writing line 2
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.stderr
    again = out.read_bytes().splitlines()
    assert [orjson.loads(x).get("custom_id") or orjson.loads(x)["id"] for x in again] == ["e0", "e1", "e2", "p"]
    assert sorted(again) == sorted(whole)  # the same records, each once
