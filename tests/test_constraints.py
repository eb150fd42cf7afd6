"""Structured outputs on the default model (a real tokenizer): every constrained output parses and
validates, greedy and sampled; each distinct grammar is compiled once; a schema the library cannot
handle is an error line for its request only."""

from __future__ import annotations

import json
import re

import jsonschema
import orjson
import pytest

from batchcli.planning import grammars
from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine
from batchcli.pipeline import prepare
from batchcli.planning.plan import PlanSettings
from batchcli.params import SamplingParams
from test_engine import run_records

pytestmark = pytest.mark.slow

SCHEMAS = [
    # bounds everywhere: a sampled 135M model fills an unbounded integer with digits up to max_tokens
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 150}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]},
                                      "score": {"type": "number", "minimum": 0, "maximum": 1}},
     "required": ["label", "score"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                               "minItems": 1, "maxItems": 3},
                                      "ok": {"type": "boolean"}, "city": {"type": ["string", "null"], "maxLength": 10}},
     "required": ["tags", "ok", "city"], "additionalProperties": False},
    {"type": "object", "properties": {"person": {"type": "object", "properties": {
        "first": {"type": "string", "maxLength": 10}, "year": {"type": "integer", "minimum": 1900, "maximum": 2030}},
        "required": ["first", "year"], "additionalProperties": False}}, "required": ["person"],
     "additionalProperties": False},
]
PROMPTS = ["Describe Alice, a 30 year old engineer, as JSON.", "List facts about Paris in JSON."]
REGEX = r"[A-Z][a-z]{2,8} [0-9]{1,3}"
CHOICES = ["positive", "negative", "neutral"]


def _chat(i: int, prompt: str, **fields) -> dict:
    return {"id": f"q{i}", "messages": [{"role": "user", "content": prompt}], "max_tokens": 80, **fields}


def _lines() -> list[dict]:
    lines = []
    for s, schema in enumerate(SCHEMAS):
        for p, prompt in enumerate(PROMPTS):
            temperature = {"temperature": 1.0, "seed": s} if p == 1 else {}  # greedy and sampled
            lines.append(_chat(len(lines), prompt, json_schema=schema, **temperature))
    lines.append(_chat(len(lines), "Name a city and a number.", regex=REGEX, temperature=0.8, seed=3))
    lines.append(_chat(len(lines), "Is 'I love it' positive or negative?", choice=CHOICES))
    lines.append(_chat(len(lines), "Is 'awful' positive or negative?", choice=CHOICES, temperature=1.0, seed=1))
    lines.append({"custom_id": "oa1", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"messages": [{"role": "user", "content": "Give the name and age of a cat as a JSON object."}],
                           "max_tokens": 80, "temperature": 0, "frequency_penalty": 1.0,
                           "response_format": {"type": "json_object"}}})
    lines.append({"custom_id": "oa2", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"messages": [{"role": "user", "content": "Describe Bob."}], "max_tokens": 80, "seed": 4,
                           "response_format": {"type": "json_schema", "json_schema": {
                               "name": "person", "strict": True, "schema": SCHEMAS[0]}}}})
    lines.append(_chat(len(lines), "x", json_schema={"type": "string", "format": "no-such-format"}))
    lines.append(_chat(len(lines), "y", regex="(unclosed"))
    return lines


def test_every_constrained_output_parses_and_validates(tmp_path, smol_dir, monkeypatch):
    compiled = []
    real_compile = grammars._compile
    monkeypatch.setattr(grammars, "_compile", lambda c, tok: (compiled.append(c), real_compile(c, tok))[1])
    lines = _lines()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    job = prepare(str(path), SamplingParams(), PlanSettings(block_size=16, sharing="multi"), smol_dir)
    # one compile per distinct grammar: 4 schemas (oa2's is the first), the regex, the choice, json_object, 2 bad
    assert len(compiled) == len(set(compiled)) == len(SCHEMAS) + 1 + 1 + 1 + 2
    assert sorted((e.id, e.code) for e in job.tokenized.errors) == [("q13", "invalid_constraint"), ("q14", "invalid_constraint")]
    assert "no-such-format" in job.tokenized.errors[0].message
    engine = Engine(smol_dir, EngineConfig(dtype="float32", attention="torch"), job.tokenizer.decode)
    got = {}
    run_records(engine, job, lambda r: got.__setitem__(r.request.id, r))
    assert len(got) == len(lines) - 2
    for i, line in enumerate(lines[:-2]):
        rid = line.get("id", line.get("custom_id"))
        completion = got[rid].completions[0]
        assert completion.finish_reason == "stop", (rid, completion.text)
        text = completion.text
        if "json_schema" in line:
            jsonschema.validate(json.loads(text), line["json_schema"])
        elif "regex" in line:
            assert re.fullmatch(REGEX, text), text
        elif "choice" in line:
            assert text in CHOICES
        elif rid == "oa1":
            assert isinstance(json.loads(text), dict)
        else:
            jsonschema.validate(json.loads(text), SCHEMAS[0])


def test_masks_cover_padded_vocabularies_and_rows_in_any_order(smol_tokenizer):
    import torch

    from batchcli.engine.constraints import Guides
    from batchcli.requests import InputFormat, Request
    from batchcli.params import Constraint
    from batchcli.planning.tokenize import TokenizedRequests
    from batchcli.planning.token_arrays import TokenArrays

    choice = Constraint("choice", '["yes","no"]')
    params = SamplingParams(constraint=choice)
    batch = TokenizedRequests([Request("a", 1, InputFormat.SIMPLE, params, prompt="")], TokenArrays.from_lists([[1]]), [])
    _, compiled = grammars.compile_constraints(batch, smol_tokenizer, lambda: (2,))
    width = smol_tokenizer.vocab_size + 64  # a model whose embedding rows are padded past the tokenizer
    logits = torch.zeros(3, width)
    Guides(compiled).mask_(logits, [SamplingParams(), params, params], [0, 1, 2])
    assert torch.equal(logits[0], torch.zeros(width))  # the unconstrained row is untouched
    allowed = {smol_tokenizer.decode([t]) for t in torch.nonzero(logits[1] == 0).flatten().tolist()}
    assert allowed and all("yes".startswith(a) or "no".startswith(a) for a in allowed)
    assert torch.equal(logits[1], logits[2]) and bool((logits[1, smol_tokenizer.vocab_size:] == float("-inf")).all())
