"""Tool calls in chat and /v1/responses lines: tools and tool_choice as each endpoint spells them, the
forced-call grammar, calls read back from the text and rendered in each endpoint's own shape (the
openai SDK validates every line in conftest), and on the default model every forced call parses and
validates against its tool's schema, greedy and sampled."""

from __future__ import annotations

import json

import jsonschema
import orjson
import pytest
from typer.testing import CliRunner

from batchcli.cli import app
from batchcli.formats.output import render_result
from batchcli.io.reader import read_requests
from batchcli.requests import ToolUse
from batchcli.params import SamplingParams
from batchcli.engine.events import Answer, Completion
from batchcli.results import Result
from batchcli.formats.tool_calls import calls_of
from helpers_openai import validate_openai_line
from test_constraints import SCHEMAS

runner = CliRunner()
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
           "additionalProperties": False}


def _chat_tool(name: str, parameters: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"the {name} tool", "parameters": parameters}}


def _flat_tool(name: str, parameters: dict) -> dict:
    return {"type": "function", "name": name, "description": f"the {name} tool", "parameters": parameters}


def _chat(custom_id: str, **body) -> dict:
    body.setdefault("messages", [{"role": "user", "content": "What is the weather in Paris?"}])
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _resp(custom_id: str, **body) -> dict:
    body.setdefault("input", "What is the weather in Paris?")
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def _read(tmp_path, *rows: dict) -> list:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return list(read_requests(path, SamplingParams()))


def test_required_constrains_to_a_list_of_calls_of_any_tool(tmp_path):
    (req,) = _read(tmp_path, _chat("a", tools=[_chat_tool("w", WEATHER), _chat_tool("t", {})], tool_choice="required"))
    assert req.tool_use.mode == "forced" and req.tool_use.parallel
    schema = json.loads(req.params.constraint.spec)
    assert schema["type"] == "array" and schema["minItems"] == 1
    assert [c["properties"]["name"]["const"] for c in schema["items"]["anyOf"]] == ["w", "t"]
    assert schema["items"]["anyOf"][0]["properties"]["arguments"] == WEATHER
    jsonschema.validate([{"name": "w", "arguments": {"city": "Oslo"}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "w", "arguments": {"town": "Oslo"}}], schema)


def test_a_named_function_is_one_call_of_that_tool_in_both_spellings(tmp_path):
    chat, resp = _read(
        tmp_path, _chat("a", tools=[_chat_tool("w", WEATHER), _chat_tool("t", {})],
                        tool_choice={"type": "function", "function": {"name": "w"}}),
        _resp("b", tools=[_flat_tool("w", WEATHER), _flat_tool("t", {})], tool_choice={"type": "function", "name": "w"}))
    assert chat.params.constraint == resp.params.constraint
    assert chat.tool_use == resp.tool_use and not chat.tool_use.parallel
    schema = json.loads(chat.params.constraint.spec)
    assert schema["properties"]["name"] == {"const": "w"}


def test_equal_tool_sets_share_one_object(tmp_path):
    a, b = _read(tmp_path, _chat("a", tools=[_chat_tool("w", WEATHER)]), _chat("b", tools=[_chat_tool("w", WEATHER)]))
    assert a.tool_use is b.tool_use and a.tool_use.mode == "auto"


def test_tool_choice_none_answers_in_plain_text(tmp_path):
    (req,) = _read(tmp_path, _chat("a", tools=[_chat_tool("w", WEATHER)], tool_choice="none"))
    assert req.tool_use is None and req.params.constraint is None


@pytest.mark.parametrize("row, code, words", [
    (_chat("a", tools=[_chat_tool("w", WEATHER)], tool_choice={"type": "function", "function": {"name": "x"}}),
     "invalid_value", "not among body.tools"),
    (_chat("a", tool_choice="required"), "invalid_value", "needs body.tools"),
    (_chat("a", tools=[_flat_tool("w", WEATHER)]), "invalid_type", "body.tools[0].function"),
    (_resp("a", tools=[_chat_tool("w", WEATHER)]), "unknown_field", "body.tools[0] has unknown field(s): function"),
    (_chat("a", tools=[_chat_tool("w", WEATHER), _chat_tool("w", {})]), "invalid_value", "defined twice"),
    (_chat("a", tools=[_chat_tool("bad name", {})]), "invalid_value", "body.tools[0].function.name"),
    (_resp("a", tools=[{"type": "web_search"}]), "unsupported", "function tool"),
    (_chat("a", tools=[_chat_tool("w", WEATHER)], tool_choice="required", response_format={"type": "json_object"}),
     "unsupported", "structured-output"),
    (_resp("a", tools=[_flat_tool("w", WEATHER)], tool_choice={"type": "function", "function": {"name": "w"}}),
     "invalid_value", '{"type": "function", "name": ...}'),
])
def test_bad_tools_are_error_lines(tmp_path, row, code, words):
    (err,) = _read(tmp_path, row)
    assert err.code == code and words in err.message, err


USE = ToolUse("forced", (_chat_tool("w", WEATHER), _chat_tool("t", {})), True)


@pytest.mark.parametrize("text, calls", [
    ('{"name": "w", "arguments": {"city": "Oslo"}}', [("w", '{"city": "Oslo"}')]),
    ('[{"name": "w", "arguments": {"city": "Oslo"}}, {"name": "t", "arguments": {}}]',
     [("w", '{"city": "Oslo"}'), ("t", "{}")]),
    ('{"name": "w", "arguments": {"city": "Os', None),  # cut by max_tokens
    ('{"name": "nope", "arguments": {}}', None),
])
def test_forced_wire_format_reads_back(text, calls):
    found = calls_of(text, USE)
    assert (found and [(c.name, c.arguments) for c in found[0]]) == (calls or None)


def _result(tmp_path, row: dict, text: str, finish_reason: str = "stop") -> dict:
    (req,) = _read(tmp_path, row)
    completion = Completion(text, (5, 6), finish_reason)
    return render_result(Result(req.without_prompt(), Answer(0, (completion,), 9, 0)), model="m")["response"]["body"]


def test_chat_calls_render_as_message_tool_calls(tmp_path):
    row = _chat("a", tools=[_chat_tool("w", WEATHER), _chat_tool("t", {})], tool_choice="required")
    body = _result(tmp_path, row, '[{"name": "w", "arguments": {"city": "Oslo"}}, {"name": "t", "arguments": {}}]')
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [c["function"] for c in calls] == [{"name": "w", "arguments": '{"city": "Oslo"}'},
                                              {"name": "t", "arguments": "{}"}]
    assert len({c["id"] for c in calls}) == 2 and all(c["type"] == "function" for c in calls)


def test_a_truncated_forced_call_stays_text_with_finish_reason_length(tmp_path):
    row = _chat("a", tools=[_chat_tool("w", WEATHER)], tool_choice="required")
    choice = _result(tmp_path, row, '[{"name": "w", "argu', "length")["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"] == {"role": "assistant", "content": '[{"name": "w", "argu'}


def test_responses_calls_render_as_function_call_items(tmp_path):
    tools = [_flat_tool("w", WEATHER)]
    body = _result(tmp_path, _resp("a", tools=tools, tool_choice={"type": "function", "name": "w"}),
                   '{"name": "w", "arguments": {"city": "Oslo"}}')
    (item,) = body["output"]
    assert item["type"] == "function_call" and (item["name"], item["arguments"]) == ("w", '{"city": "Oslo"}')
    assert item["call_id"].startswith("call_") and body["status"] == "completed"
    assert body["tools"] == tools and body["tool_choice"] == {"type": "function", "name": "w"}
    assert body["parallel_tool_calls"] is True


def _forced_lines() -> list[dict]:
    """Four schemas x chat/responses x required/named x greedy/sampled, with parallel calls on and off."""
    rows = []
    for s, schema in enumerate(SCHEMAS):
        other = SCHEMAS[(s + 1) % len(SCHEMAS)]
        for sampled in (False, True):
            sampling = {"temperature": 1.0} if sampled else {"temperature": 0}  # seeded by --seed
            parallel = {"parallel_tool_calls": sampled}
            prompt = f"Call a tool for case {s}."
            chat_tools = [_chat_tool(f"f{s}", schema), _chat_tool(f"g{s}", other)]
            flat_tools = [_flat_tool(f"f{s}", schema), _flat_tool(f"g{s}", other)]
            messages = [{"role": "user", "content": prompt}]
            rows += [
                _chat(f"c{s}{sampled:d}r", messages=messages, tools=chat_tools, tool_choice="required", max_tokens=200,
                      **parallel, **sampling),
                _chat(f"c{s}{sampled:d}n", messages=messages, tools=chat_tools, max_tokens=200, **sampling,
                      tool_choice={"type": "function", "function": {"name": f"f{s}"}}),
                _resp(f"r{s}{sampled:d}r", input=prompt, tools=flat_tools, tool_choice="required",
                      max_output_tokens=200, **parallel, **sampling),
                _resp(f"r{s}{sampled:d}n", input=prompt, tools=flat_tools, max_output_tokens=200, **sampling,
                      tool_choice={"type": "function", "name": f"f{s}"}),
            ]
    return rows


def _calls(record: dict) -> list[tuple[str, str]]:
    body = record["response"]["body"]
    if body["object"] == "response":
        assert body["status"] == "completed", body
        return [(i["name"], i["arguments"]) for i in body["output"] if i["type"] == "function_call"]
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls", choice
    return [(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]]


@pytest.mark.slow
def test_every_forced_call_on_the_default_model_parses_and_validates(tmp_path):
    rows = _forced_lines() + [
        _chat("plain-chat", max_tokens=8, temperature=0),
        {"custom_id": "plain-cmpl", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "The weather in Paris is", "max_tokens": 8, "temperature": 0}},
        _resp("plain-resp", max_output_tokens=8, temperature=0),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = runner.invoke(app, ["run", str(src), "-o", str(out), "--quiet", "--dtype", "float32", "--order", "input",
                              "--seed", "7"])
    assert res.exit_code == 0, res.stderr
    records = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [r["custom_id"] for r in records] == [r["custom_id"] for r in rows]
    schemas = {}
    for row in rows[:-3]:
        for tool in row["body"]["tools"]:
            spec = tool.get("function", tool)
            schemas[spec["name"]] = spec["parameters"]
    for row, record in zip(rows, records):
        validate_openai_line(record)
        if row in rows[-3:]:
            continue
        calls = _calls(record)
        assert calls and (len(calls) == 1 or row["body"].get("parallel_tool_calls")), record
        named = row["body"]["tool_choice"]
        for name, arguments in calls:
            assert named == "required" or name == named.get("name", named.get("function", {}).get("name"))
            jsonschema.validate(json.loads(arguments), schemas[name])


def test_run_help_lists_tools_as_honoured_not_as_no_ops():
    from batchcli.formats.openai_body import openai_body_fields

    chat, responses = openai_body_fields().split("except /v1/responses")
    honoured, rest = chat.split("ignored:")
    no_ops = rest.split("no-op value only:")[1]
    assert all(k in honoured and k not in no_ops for k in ("tools", "tool_choice", "parallel_tool_calls"))
    assert "tools" in responses.split("ignored:")[0]
