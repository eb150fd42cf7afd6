"""Tool calls read back from an answer's text, and rendered as chat `message.tool_calls`.

A forced answer is tools.py's wire format (one {"name", "arguments"} object, or a list of them). An
`auto` answer is whatever the model's template taught it; the common formats are read: JSON calls
inside <tool_call>...</tool_call> tags (Qwen, Hermes), or the whole answer one JSON call whose
arguments are named `arguments` or `parameters` (Llama 3). Text outside the tags is the answer's
content.
Invariant: a call is returned only when its name is one of the line's tools and its arguments are a
JSON object; anything else leaves the text a plain answer (`calls_of` returns None).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from batchcli.requests import ToolUse
from batchcli.engine.events import Completion

_TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI returns it


def calls_of(text: str, use: ToolUse) -> tuple[tuple[ToolCall, ...], str | None] | None:
    """The calls in `text` and the content left beside them (None when there is none), or None when
    the text holds no call of the line's tools."""
    names = {t["function"]["name"] for t in use.tools}
    if use.mode == "auto" and "<tool_call>" in text:
        found = [_decoded(m) for m in _TAGGED.findall(text)]
        content = _TAGGED.sub("", text).strip() or None
    else:
        found, content = [_decoded(text)], None
    calls = []
    for item in found:
        for raw in item if type(item) is list else [item]:
            call = _call(raw, names)
            if call is None:
                return None
            calls.append(call)
    return (tuple(calls), content) if calls else None


def _decoded(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:  # a truncated or malformed call: the answer stays text
        return None


def _call(raw: object, names: set[str]) -> ToolCall | None:
    if type(raw) is not dict or raw.get("name") not in names:
        return None
    arguments = raw.get("arguments", raw.get("parameters"))
    if type(arguments) is not dict:
        return None
    return ToolCall(raw["name"], json.dumps(arguments, ensure_ascii=False))


def chat_choice(c: Completion, use: ToolUse | None, call_id: str) -> tuple[dict, str]:
    """The chat message of one completion and its finish_reason: tool calls (ids `call_id` + their
    index, unique within the line when `call_id` names the choice) or plain content."""
    found = calls_of(c.text, use) if use is not None else None
    if found is None:
        return {"role": "assistant", "content": c.text}, c.finish_reason
    calls, content = found
    tool_calls = [{"id": f"{call_id}_{k}", "type": "function",
                   "function": {"name": call.name, "arguments": call.arguments}} for k, call in enumerate(calls)]
    return {"role": "assistant", "content": content, "tool_calls": tool_calls}, "tool_calls"
