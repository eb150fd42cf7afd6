"""/v1/responses batch lines: the body's rules, the Response object (validated by the openai SDK in
conftest), and greedy float32 text equal to that of the equivalent chat line."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from batchcli.cli import app
from batchcli.formats.output import render_result
from batchcli.io.reader import read_requests
from batchcli.requests import InputFormat
from batchcli.params import Constraint, SamplingParams
from batchcli.engine.events import Answer, Completion
from batchcli.results import Result
from helpers_models import save_tiny_with_tokenizer
from helpers_openai import validate_openai_line

runner = CliRunner()
SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def _line(custom_id: str, body: dict, url: str = "/v1/responses") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _read(tmp_path, *rows: dict) -> list:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return list(read_requests(path, SamplingParams()))


def test_input_items_and_instructions_become_chat_messages(tmp_path):
    body = {"instructions": "Be brief.", "max_output_tokens": 7, "temperature": 0.5, "top_p": 0.9,
            "metadata": {"k": "v"}, "store": False, "user": "u1", "reasoning": {"effort": "low"},
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                      {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
                      {"role": "developer", "content": "d"}]}
    (req,) = _read(tmp_path, _line("r", body))
    assert req.format is InputFormat.OPENAI_RESPONSES and req.custom_id == "r"
    assert req.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "a\nb"},
                            {"role": "assistant", "content": "c"}, {"role": "developer", "content": "d"})
    assert (req.params.max_tokens, req.params.temperature, req.params.top_p) == (7, 0.5, 0.9)
    assert req.echo.metadata == {"k": "v"} and req.echo.instructions == "Be brief."


def test_a_string_input_is_one_user_message_with_openais_defaults(tmp_path):
    (req,) = _read(tmp_path, _line("r", {"input": "hi"}))
    assert req.messages == ({"role": "user", "content": "hi"},)
    assert req.params.temperature == 1.0 and req.params.max_tokens is None


def test_text_format_maps_onto_the_chat_constraints(tmp_path):
    flat = {"type": "json_schema", "name": "x", "schema": SCHEMA, "strict": True}
    nested = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}
    resp, chat, obj, text = _read(
        tmp_path, _line("a", {"input": "hi", "text": {"format": flat}}),
        _line("b", {"messages": [{"role": "user", "content": "hi"}], "response_format": nested}, "/v1/chat/completions"),
        _line("c", {"input": "hi", "text": {"format": {"type": "json_object"}}}),
        _line("d", {"input": "hi", "text": {"format": {"type": "text"}}}))
    assert resp.params.constraint == chat.params.constraint == Constraint("json_schema", orjson.dumps(SCHEMA).decode())
    assert obj.params.constraint == Constraint("json_object", "") and text.params.constraint is None


@pytest.mark.parametrize("body, code, words", [
    ({}, "missing_prompt", "body.input is required"),
    ({"input": "hi", "frequency_penalty": 1}, "unknown_field", "body.frequency_penalty"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "unsupported", "body.previous_response_id"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "unsupported", "body.tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "unsupported", "input_text"),
    ({"input": [{"role": "tool", "content": "x"}]}, "invalid_value", "body.input[0].role"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": SCHEMA}}}, "missing_required_parameter",
     "body.text.format.name"),
    ({"input": "hi", "text": {"format": {"type": "json_object", "schema": SCHEMA}}}, "unknown_field",
     "body.text.format has unknown field(s): schema"),
    ({"input": "hi", "text": {"format": {"type": "grammar"}}}, "unsupported", "body.text.format.type"),
    ({"input": "hi", "metadata": {"k": 1}}, "invalid_type", "body.metadata"),
    ({"input": "hi", "max_output_tokens": "9"}, "invalid_type", "body.max_output_tokens"),
])
def test_bad_bodies_are_error_lines(tmp_path, body, code, words):
    (err,) = _read(tmp_path, _line("r", body))
    assert err.code == code and words in err.message and err.custom_id == "r"


def _result(finish_reason: str, params: SamplingParams, tmp_path) -> Result:
    (req,) = _read(tmp_path, _line("r", {"input": "hi", "instructions": "sys", "max_output_tokens": 3,
                                          "metadata": {"k": "v"}, "text": {"format": {"type": "json_object"}}}))
    completion = Completion("{}", (5, 6, 7), finish_reason)
    return Result(req.without_prompt(), Answer(0, (completion,), prompt_tokens=10, cached_tokens=4))


def test_a_finished_answer_is_a_completed_response(tmp_path):
    line = render_result(_result("stop", SamplingParams(), tmp_path), model="smol", created=5)  # SDK-validated
    body = line["response"]["body"]
    assert body["status"] == "completed" and body["incomplete_details"] is None
    assert body["output"][0]["content"][0] == {"type": "output_text", "text": "{}", "annotations": []}
    assert body["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                             "output_tokens": 3,
                             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}
    assert (body["instructions"], body["metadata"], body["max_output_tokens"]) == ("sys", {"k": "v"}, 3)
    assert body["text"] == {"format": {"type": "json_object"}} and body["model"] == "smol"


def test_a_truncated_answer_is_incomplete_for_max_output_tokens(tmp_path):
    body = render_result(_result("length", SamplingParams(), tmp_path), model="smol")["response"]["body"]
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_dir):
    return str(save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-responses"), smol_dir))


def test_greedy_text_equals_the_equivalent_chat_lines(tmp_path, tiny):
    rows = [
        _line("resp", {"instructions": "Be brief.", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Name a colour."}]}], "max_output_tokens": 12, "temperature": 0}),
        _line("chat", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
                       "max_tokens": 12, "temperature": 0}, "/v1/chat/completions"),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = runner.invoke(app, ["run", str(src), "-o", str(out), "--model", tiny, "--quiet", "--dtype", "float32",
                              "--order", "input"])
    assert res.exit_code == 0, res.stderr
    resp, chat = (orjson.loads(x) for x in out.read_bytes().splitlines())
    for line in (resp, chat):
        validate_openai_line(line)
    body = resp["response"]["body"]
    text = body["output"][0]["content"][0]["text"]
    assert text and text == chat["response"]["body"]["choices"][0]["message"]["content"]
    assert body["usage"]["input_tokens"] == chat["response"]["body"]["usage"]["prompt_tokens"]
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == chat["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_run_help_lists_the_responses_fields():
    from batchcli.formats.openai_body import openai_body_fields

    listed = openai_body_fields().split("/v1/responses")[1]
    assert "max_output_tokens" in listed and "instructions" in listed and "reasoning" in listed
