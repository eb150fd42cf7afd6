"""/v1/responses batch lines: the body's rules (input items, instructions, max_output_tokens,
text.format, ...) and the Response object an answer is rendered as.

Invariant: every body field is honoured (RESPONSES_KEYS), ignored because it cannot change the tokens
(_IGNORED), accepted only at its no-op value (_NEUTRAL), or an error for that line; a rendered body is
an `openai.types.responses.Response` (the suite validates it with the SDK).
"""

from __future__ import annotations

from dataclasses import dataclass

from batchcli.formats.constraint_fields import text_format_constraint
from batchcli.formats.fields import BadField, as_arguments, as_int, as_text, sampling_overrides, show
from batchcli.formats.openai_body import check_body_extras
from batchcli.requests import ToolUse
from batchcli.results import Result
from batchcli.formats.tool_calls import calls_of
from batchcli.formats.tools import tool_use

# "model" is honoured by being checked against the served model (reader), as on the other endpoints.
RESPONSES_KEYS = frozenset({"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "text", "tools",
                            "tool_choice", "parallel_tool_calls"})
# Fields with no effect on the tokens we produce: our models are not run with reasoning settings, and
# store / metadata / user only matter to OpenAI's own bookkeeping.
_IGNORED = frozenset({"metadata", "store", "user", "reasoning", "service_tier", "safety_identifier",
                      "prompt_cache_key"})
_NEUTRAL: dict[str, tuple] = {
    "stream": (None, False), "background": (None, False), "truncation": (None, "disabled"),
    "include": (None, []), "previous_response_id": (None,), "conversation": (None,), "prompt": (None,),
    "max_tool_calls": (None,), "top_logprobs": (None, 0),
}
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_PART_TYPES = {"user": "input_text", "system": "input_text", "developer": "input_text", "assistant": "output_text"}


@dataclass(frozen=True, slots=True)
class ResponseEcho:
    """The request fields a Response repeats back (OpenAI echoes them); one object per distinct set."""

    instructions: str | None
    max_output_tokens: int | None
    metadata: dict | None
    text: dict  # {"format": {...}} as given, {"format": {"type": "text"}} by default
    tools: tuple[dict, ...]  # as given (flat function tools)
    tool_choice: object  # as given, "auto" by default
    parallel_tool_calls: bool


def responses_request(body: dict) -> tuple[tuple[dict, ...], dict, ToolUse | None, ResponseEcho]:
    """The chat messages, the sampling changes, the tool use and the echo of a /v1/responses body."""
    check_body_extras(body, RESPONSES_KEYS, _IGNORED, _NEUTRAL)
    if "input" not in body:
        raise BadField("missing_prompt", "body.input is required for /v1/responses")
    messages = _input_messages(body["input"])
    instructions = body.get("instructions")
    if instructions is not None:
        messages = ({"role": "system", "content": as_text(instructions, "body.instructions")}, *messages)
    changes = sampling_overrides({k: body[k] for k in ("temperature", "top_p") if k in body})
    limit = body.get("max_output_tokens")
    if limit is not None:
        changes["max_tokens"] = as_int(limit, "body.max_output_tokens")
    text = body.get("text")
    if text is None:
        text = {"format": {"type": "text"}}
    if type(text) is not dict or not text.keys() <= {"format", "verbosity"} or text.get("verbosity") not in (None, "medium"):
        raise BadField("unsupported", f"body.text must be {{\"format\": ...}}, got {show(text)}")
    changes["constraint"] = text_format_constraint(text.get("format"))
    metadata = body.get("metadata")
    if metadata is not None and (type(metadata) is not dict
                                 or not all(type(v) is str for v in metadata.values())):
        raise BadField("invalid_type", f"body.metadata must be an object of strings, got {show(metadata)}")
    use = tool_use(body, changes, nested=False)
    echo = ResponseEcho(instructions, limit, metadata, text, tuple(body.get("tools") or ()),
                        body.get("tool_choice") or "auto", body.get("parallel_tool_calls") is not False)
    return messages, changes, use, echo


def _input_messages(value: object) -> tuple[dict, ...]:
    """body.input as chat messages: a string is one user message; a list holds message items and the
    function_call / function_call_output items of a tool transcript (consecutive calls make one
    assistant message with tool_calls; an output a tool message, as chat templates take them)."""
    if type(value) is str:
        return ({"role": "user", "content": as_text(value, "body.input")},)
    if type(value) is not list or not value:
        raise BadField("invalid_type", f"body.input must be a string or a non-empty list of items, got {show(value)}")
    messages: list[dict] = []
    for i, item in enumerate(value):
        name = f"body.input[{i}]"
        kind = item.get("type") if type(item) is dict else None
        if kind == "function_call":
            call = _function_call(item, name)
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("content") is None:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            _only(item, {"type", "call_id", "output", "id", "status"}, name)
            messages.append({"role": "tool", "content": as_text(item.get("output"), f"{name}.output"),
                             "tool_call_id": as_text(item.get("call_id"), f"{name}.call_id")})
        else:
            messages.append(_message_item(item, name))
    return tuple(messages)


def _function_call(item: dict, name: str) -> dict:
    _only(item, {"type", "call_id", "name", "arguments", "id", "status"}, name)
    return {"id": as_text(item.get("call_id"), f"{name}.call_id"), "type": "function",
            "function": {"name": as_text(item.get("name"), f"{name}.name"),
                         "arguments": as_arguments(item.get("arguments"), f"{name}.arguments")}}


def _only(item: dict, keys: set[str], name: str) -> None:
    if not item.keys() <= keys:
        raise BadField("unknown_field", f"{name} has unknown field(s): {', '.join(sorted(item.keys() - keys))}")


def _message_item(item: object, name: str) -> dict:
    if type(item) is not dict or item.get("type", "message") != "message":
        raise BadField("unsupported", f"{name} must be a message, function_call or function_call_output item, "
                                      f"got {show(item)}")
    _only(item, {"type", "role", "content"}, name)
    role = item.get("role")
    if role not in _ROLES:
        raise BadField("invalid_value", f"{name}.role must be one of {', '.join(sorted(_ROLES))}, got {show(role)}")
    content = item.get("content")
    if type(content) is str:
        return {"role": role, "content": content}
    part_type = _PART_TYPES[role]
    if type(content) is not list or not content:
        raise BadField("invalid_type", f"{name}.content must be a string or a list of {part_type} parts, got {show(content)}")
    texts = []
    for j, part in enumerate(content):
        if type(part) is not dict or part.get("type") != part_type or type(part.get("text")) is not str:
            raise BadField("unsupported", f"{name}.content[{j}] must be {{\"type\": \"{part_type}\", \"text\": ...}}, "
                                          f"got {show(part)}")
        _only(part, {"type", "text", "annotations"}, f"{name}.content[{j}]")
        texts.append(part["text"])
    return {"role": role, "content": "\n".join(texts)}


def body_fields() -> str:
    """The --help line of /v1/responses bodies."""
    return (f"except /v1/responses bodies, whose fields honoured are: {', '.join(sorted(RESPONSES_KEYS - {'model'}))}; ignored: "
            f"{', '.join(sorted(_IGNORED))}; accepted at their no-op value only: {', '.join(sorted(_NEUTRAL))}")


def response_body(result: Result, digest: str, model: str, created: int) -> dict:
    """The Response object of a finished /v1/responses request (always one sample: no `n` here)."""
    request, echo = result.request, result.request.echo
    assert isinstance(echo, ResponseEcho), f"request {request.id!r} carries no ResponseEcho"
    completion = result.completions[0]
    truncated = completion.finish_reason == "length"
    status = "incomplete" if truncated else "completed"
    found = calls_of(completion.text, request.tool_use) if request.tool_use is not None else None
    calls, content = found if found is not None else ((), completion.text)
    output = [] if content is None else [
        {"type": "message", "id": f"msg_{digest}", "role": "assistant", "status": status,
         "content": [{"type": "output_text", "text": content, "annotations": []}]}]
    output += [{"type": "function_call", "id": f"fc_{digest}_{k}", "call_id": f"call_{digest}_{k}", "name": call.name,
                "arguments": call.arguments, "status": "completed"} for k, call in enumerate(calls)]
    return {
        "id": f"resp_{digest}", "object": "response", "created_at": float(created), "model": model,
        "status": status, "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "error": None, "instructions": echo.instructions, "metadata": echo.metadata,
        "max_output_tokens": echo.max_output_tokens, "temperature": request.params.temperature,
        "top_p": request.params.top_p, "text": echo.text, "tools": list(echo.tools),
        "tool_choice": echo.tool_choice, "parallel_tool_calls": echo.parallel_tool_calls, "output": output,
        "usage": {
            "input_tokens": result.prompt_tokens,
            # shared prefixes live for one run only: nothing is written to a cache a later request could read
            "input_tokens_details": {"cached_tokens": result.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": result.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},  # no reasoning models here
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
