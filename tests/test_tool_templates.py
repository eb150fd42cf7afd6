"""Tools through chat templates: tool-call histories (chat messages and responses items) rendered by
a template that knows tool calls, a clear error line where the template cannot show them (SmolLM2's),
`auto` answers read in the common formats, and shared tool definitions planned as a shared prefix."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from batchcli.cli import app
from batchcli.io.reader import read_requests
from batchcli.requests import ToolUse
from batchcli.params import SamplingParams
from batchcli.planning.tokenize import PromptTokenizer, tokenize_requests
from batchcli.formats.tool_calls import calls_of
from helpers_models import save_tiny_with_tokenizer
from test_tool_calls import WEATHER, _chat, _chat_tool, _flat_tool, _resp

runner = CliRunner()
# A Hermes / Qwen2.5-style template, cut to what these tests need: tools in the system turn, calls in
# <tool_call> tags, tool results as <tool_response> user turns.
TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.' }}

# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Return each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

HISTORY = [{"role": "user", "content": "Weather in Oslo?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Oslo"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
RESPONSES_HISTORY = [{"role": "user", "content": "Weather in Oslo?"},
                     {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": '{"city": "Oslo"}'},
                     {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]


@pytest.fixture(scope="module")
def tools_model(tmp_path_factory, smol_dir):
    """A tiny random Llama with SmolLM2's tokenizer and a chat template that takes tools."""
    directory = save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-tools"), smol_dir)
    (directory / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    return directory


def _tokenized(tmp_path, model_dir, *rows: dict):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    tokenizer = PromptTokenizer(model_dir)
    return tokenizer, tokenize_requests(read_requests(path, SamplingParams()), tokenizer)


def test_a_tool_history_renders_through_a_template_that_knows_tool_calls(tmp_path, tools_model):
    tokenizer, batch = _tokenized(tmp_path, tools_model, _chat("c", messages=HISTORY),
                                  _resp("r", input=RESPONSES_HISTORY))
    assert not batch.errors
    text = tokenizer.tok.decode(list(batch.tokens[0]))
    assert '<tool_call>\n{"name": "w", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert list(batch.tokens[0]) == list(batch.tokens[1])  # the responses items are the same transcript


def test_smollm2_cannot_render_tool_calls_or_auto_tools_and_says_so(tmp_path, smol_dir):
    _, batch = _tokenized(tmp_path, smol_dir, _chat("hist", messages=HISTORY),
                          _chat("auto", tools=[_chat_tool("w", WEATHER)]),
                          _resp("auto-r", tools=[_flat_tool("w", WEATHER)], tool_choice="auto"),
                          _chat("none", tools=[_chat_tool("w", WEATHER)], tool_choice="none"),
                          _chat("forced", tools=[_chat_tool("w", WEATHER)], tool_choice="required"))
    errors = {e.id: e for e in batch.errors}
    assert errors["hist"].code == "unsupported" and "cannot render assistant tool_calls" in errors["hist"].message
    for rid in ("auto", "auto-r"):
        assert errors[rid].code == "unsupported" and "takes no tools" in errors[rid].message
    assert [r.id for r in batch.requests] == ["none", "forced"]  # forced calls are constrained, template or not


@pytest.mark.parametrize("bad, words", [
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "x", "type": "function",
                                                            "function": {"name": "w", "arguments": "{oops"}}]},
     "must be a JSON object as a string"),
    ({"role": "tool", "content": "sunny"}, "tool_call_id must be a string"),
    ({"role": "user", "content": "hi", "tool_calls": []}, "belongs to an assistant message"),
])
def test_bad_history_messages_are_error_lines(tmp_path, smol_dir, bad, words):
    (err,) = read_requests_of(tmp_path, _chat("c", messages=[bad]))
    assert words in err.message, err


def read_requests_of(tmp_path, *rows):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return list(read_requests(path, SamplingParams()))


def test_auto_tools_reach_the_prompt_and_are_planned_as_a_shared_prefix(tmp_path, tools_model):
    tools = [_chat_tool("w", WEATHER), _chat_tool("t", {"type": "object", "properties": {"tz": {"type": "string"}}})]
    rows = [_chat(f"q{i}", tools=tools, messages=[{"role": "user", "content": f"Question {i}?"}]) for i in range(8)]
    forced = _chat("forced", tools=tools, tool_choice="required", messages=[{"role": "user", "content": "Question 0?"}])
    tokenizer, batch = _tokenized(tmp_path, tools_model, *rows, forced)
    assert not batch.errors
    assert '"name": "w"' in tokenizer.tok.decode(list(batch.tokens[0]))
    assert list(batch.tokens[len(rows)]) == list(batch.tokens[0])  # a forced call's model sees the same tools
    src = tmp_path / "tools.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = runner.invoke(app, ["plan", str(src), "--dry-run", "--json", "--model", str(tools_model), "--block-size", "4"])
    assert res.exit_code == 0, res.stderr
    doc = orjson.loads(res.stdout)
    prompt = len(batch.tokens[0])
    # every line's prompt is mostly the tool definitions: all but one copy of them are saved
    assert doc["saving_ratio"] > 0.75 * (1 - 1 / len(rows)) and prompt > 100, (doc, prompt)


AUTO = ToolUse("auto", (_chat_tool("w", WEATHER),), True)


@pytest.mark.parametrize("text, calls, content", [
    ('Let me check.\n<tool_call>\n{"name": "w", "arguments": {"city": "Oslo"}}\n</tool_call>',
     [("w", '{"city": "Oslo"}')], "Let me check."),
    ('<tool_call>{"name": "w", "arguments": {"city": "A"}}</tool_call>\n<tool_call>{"name": "w", "arguments": {}}</tool_call>',
     [("w", '{"city": "A"}'), ("w", "{}")], None),
    ('{"name": "w", "parameters": {"city": "Oslo"}}', [("w", '{"city": "Oslo"}')], None),  # Llama 3
    ("It is sunny in Oslo.", None, None),
    ('<tool_call>{"name": "w", "arguments": {"city": </tool_call>', None, None),
])
def test_auto_answers_are_read_in_the_common_formats(text, calls, content):
    found = calls_of(text, AUTO)
    if calls is None:
        assert found is None
    else:
        assert [(c.name, c.arguments) for c in found[0]] == calls and found[1] == content
