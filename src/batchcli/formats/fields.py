"""Checks of the fields of one input line: types, ranges and prompt forms, raising `BadField`.

Invariant: every check either returns the value in the type `Request`/`SamplingParams` hold, or
raises `BadField` with the error code and a message naming the field and showing the bad value.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson

from batchcli.params import SamplingParams

# `constraint` comes from its own fields (json_schema, regex, choice, response_format: constraint_fields.py)
SAMPLING_KEYS = frozenset(f.name for f in dataclasses.fields(SamplingParams)) - {"constraint"}


class BadField(Exception):
    """A field check failed; the reader turns it into a `LineError` with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def sampling_overrides(fields: dict) -> dict:
    """Type-checked sampling fields of a line or body; JSON null means "use the default"."""
    changes = {}
    for key in fields.keys() & SAMPLING_KEYS:
        value = fields[key]
        if value is not None:
            changes[key] = _CHECKS[key](value, key)
    return changes


def as_int(value: object, name: str) -> int:
    if type(value) is not int:
        raise BadField("invalid_type", f"{name} must be an integer, got {show(value)}")
    return value


def as_float(value: object, name: str) -> float:
    if type(value) is not float and type(value) is not int:
        raise BadField("invalid_type", f"{name} must be a number, got {show(value)}")
    return float(value)


def as_bool(value: object, name: str) -> bool:
    if type(value) is not bool:
        raise BadField("invalid_type", f"{name} must be true or false, got {show(value)}")
    return value


def as_stop(value: object, name: str) -> tuple[str, ...]:
    stops = [value] if type(value) is str else value
    if type(stops) is not list or not all(type(s) is str for s in stops):
        raise BadField("invalid_type", f"{name} must be a string or a list of strings, got {show(value)}")
    if "" in stops:
        raise BadField("invalid_value", f"{name} must not contain an empty string, got {show(value)}")
    return tuple(stops)


def as_token_list(value: object, name: str) -> tuple[int, ...]:
    if type(value) is not list or not all(type(t) is int for t in value):
        raise BadField("invalid_type", f"{name} must be a list of token ids, got {show(value)}")
    return tuple(value)


def as_logit_bias(value: object, name: str) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} object (JSON keys are strings) as sorted (id, bias) pairs."""
    if type(value) is not dict:
        raise BadField("invalid_type", f"{name} must be an object mapping token ids to numbers, got {show(value)}")
    pairs = []
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit()):  # isdigit alone takes "²", which int() refuses
            raise BadField("invalid_value", f"{name} key {key!r} must be a token id (a non-negative integer)")
        pairs.append((int(key), as_float(bias, f"{name}[{key!r}]")))
    return tuple(sorted(pairs))


_CHECKS = {
    "max_tokens": as_int, "temperature": as_float, "top_p": as_float, "top_k": as_int, "min_p": as_float,
    "seed": as_int, "stop": as_stop, "stop_token_ids": as_token_list, "n": as_int, "ignore_eos": as_bool,
    "min_tokens": as_int, "presence_penalty": as_float, "frequency_penalty": as_float,
    "repetition_penalty": as_float, "logit_bias": as_logit_bias, "logprobs": as_int,
}
assert _CHECKS.keys() == SAMPLING_KEYS, f"every SamplingParams field needs a check: {_CHECKS.keys() ^ SAMPLING_KEYS}"


def as_text(value: object, name: str) -> str:
    if type(value) is not str:
        raise BadField("invalid_type", f"{name} must be a string, got {show(value)}")
    if not value:
        raise BadField("empty_prompt", f"{name} is an empty string")
    return value


_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


def as_messages(value: object, name: str) -> tuple[dict, ...]:
    """Chat messages as {role, content[, name][, tool_calls][, tool_call_id]} with string content;
    OpenAI's list of text parts is joined with newlines (as vLLM does), any other part type is refused.
    An assistant message's tool_calls (content may then be null) and a tool message's tool_call_id are
    kept for the chat template, each call's arguments parsed from their JSON text as templates expect."""
    if type(value) is not list:
        raise BadField("invalid_type", f"{name} must be a list of {{role, content}} objects, got {show(value)}")
    if not value:
        raise BadField("empty_prompt", f"{name} is an empty list")
    out = []
    for i, message in enumerate(value):
        if type(message) is not dict:
            raise BadField("invalid_type", f"{name}[{i}] must be an object, got {show(message)}")
        if not message.keys() <= _MESSAGE_KEYS:
            unknown = ", ".join(sorted(message.keys() - _MESSAGE_KEYS))
            raise BadField("unknown_field", f"{name}[{i}] has unknown field(s): {unknown}; known: {', '.join(sorted(_MESSAGE_KEYS))}")
        role = message.get("role")
        if type(role) is not str:
            raise BadField("invalid_type", f"{name}[{i}].role must be a string, got {show(role)}")
        calls = message.get("tool_calls")
        if calls is not None and role != "assistant":
            raise BadField("invalid_value", f"{name}[{i}].tool_calls belongs to an assistant message, not {role!r}")
        content = message.get("content")
        bare_call = calls is not None and content is None  # OpenAI writes null content beside tool calls
        rendered = {"role": role, "content": None if bare_call else _content(content, f"{name}[{i}].content")}
        if "name" in message:
            rendered["name"] = as_text(message["name"], f"{name}[{i}].name")
        if calls is not None:
            rendered["tool_calls"] = as_tool_calls(calls, f"{name}[{i}].tool_calls")
        if role == "tool":
            rendered["tool_call_id"] = as_text(message.get("tool_call_id"), f"{name}[{i}].tool_call_id")
        elif "tool_call_id" in message:
            raise BadField("invalid_value", f"{name}[{i}].tool_call_id belongs to a tool message, not {role!r}")
        out.append(rendered)
    return tuple(out)


def as_tool_calls(value: object, name: str) -> list[dict]:
    """Chat tool calls [{id, type: function, function: {name, arguments}}], arguments parsed into an
    object (templates write them with `tojson`; a JSON string there would come out quoted twice)."""
    if type(value) is not list or not value:
        raise BadField("invalid_type", f"{name} must be a non-empty list of tool calls, got {show(value)}")
    calls = []
    for k, call in enumerate(value):
        function = call.get("function") if type(call) is dict else None
        if (type(call) is not dict or not call.keys() <= {"id", "type", "function"} or call.get("type") != "function"
                or type(function) is not dict or function.keys() != {"name", "arguments"}):
            raise BadField("invalid_value", f"{name}[{k}] must be {{\"id\", \"type\": \"function\", \"function\": "
                                            f"{{\"name\", \"arguments\"}}}}, got {show(call)}")
        calls.append({"id": as_text(call.get("id"), f"{name}[{k}].id"), "type": "function",
                      "function": {"name": as_text(function["name"], f"{name}[{k}].function.name"),
                                   "arguments": as_arguments(function["arguments"], f"{name}[{k}].function.arguments")}})
    return calls


def as_arguments(value: object, name: str) -> dict:
    """A tool call's arguments, given as OpenAI writes them (a JSON object as text), as an object."""
    try:
        arguments = orjson.loads(as_text(value, name))
    except orjson.JSONDecodeError:
        arguments = None
    if type(arguments) is not dict:
        raise BadField("invalid_value", f"{name} must be a JSON object as a string, got {show(value)}")
    return arguments


def _content(value: object, name: str) -> str:
    if type(value) is str:
        return value
    if type(value) is not list or not value:
        raise BadField("invalid_type", f"{name} must be a string or a list of text parts, got {show(value)}")
    texts = []
    for j, part in enumerate(value):
        if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
            raise BadField("unsupported", f"{name}[{j}] must be {{\"type\": \"text\", \"text\": ...}}, got {show(part)}")
        if part.keys() != {"type", "text"}:
            raise BadField("unknown_field", f"{name}[{j}] has unknown field(s): {', '.join(sorted(part.keys() - {'type', 'text'}))}")
        texts.append(part["text"])
    return "\n".join(texts)


def as_token_ids(value: object, name: str) -> tuple[int, ...]:
    if type(value) is not list:
        raise BadField("invalid_type", f"{name} must be a list of token ids, got {show(value)}")
    if not value:
        raise BadField("empty_prompt", f"{name} is an empty list")
    try:
        ids = np.array(value)  # one C pass for the common, valid case
    except (ValueError, OverflowError):
        ids = None
    # numpy turns a bool among ints into 0/1, so the type of every element is checked too
    if (ids is None or ids.dtype.kind != "i" or ids.ndim != 1 or ids.min() < 0 or ids.max() >= 2**31
            or not all(type(token) is int for token in value)):
        for i, token in enumerate(value):  # slow path only to name the bad element
            if type(token) is not int:
                raise BadField("invalid_type", f"{name}[{i}] must be an integer, got {show(token)}")
            if not 0 <= token < 2**31:
                raise BadField("invalid_value", f"{name}[{i}] must be in [0, 2**31), got {token}")
    return tuple(value)


def show(value: object) -> str:
    """A JSON value as the user wrote it, cut short; a missing field shows as null."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."
