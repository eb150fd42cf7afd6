"""Checks of the fields of one input line: types, ranges and prompt forms, raising `BadField`.

Invariant: every check either returns the value in the type `Request`/`SamplingParams` hold, or
raises `BadField` with the error code and a message naming the field and showing the bad value.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson

from batchcli.requests import SamplingParams

SAMPLING_KEYS = frozenset(f.name for f in dataclasses.fields(SamplingParams))


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


_CHECKS = {
    "max_tokens": as_int, "temperature": as_float, "top_p": as_float, "top_k": as_int,
    "seed": as_int, "stop": as_stop, "n": as_int, "ignore_eos": as_bool,
}
assert _CHECKS.keys() == SAMPLING_KEYS, f"every SamplingParams field needs a check: {_CHECKS.keys() ^ SAMPLING_KEYS}"


def as_text(value: object, name: str) -> str:
    if type(value) is not str:
        raise BadField("invalid_type", f"{name} must be a string, got {show(value)}")
    if not value:
        raise BadField("empty_prompt", f"{name} is an empty string")
    return value


def as_messages(value: object, name: str) -> tuple[dict, ...]:
    if type(value) is not list:
        raise BadField("invalid_type", f"{name} must be a list of {{role, content}} objects, got {show(value)}")
    if not value:
        raise BadField("empty_prompt", f"{name} is an empty list")
    out = []
    for i, message in enumerate(value):
        if type(message) is not dict:
            raise BadField("invalid_type", f"{name}[{i}] must be an object, got {show(message)}")
        if not message.keys() <= {"role", "content"}:
            unknown = ", ".join(sorted(message.keys() - {"role", "content"}))
            raise BadField("unknown_field", f"{name}[{i}] has unknown field(s): {unknown}; known: content, role")
        role, content = message.get("role"), message.get("content")
        if type(role) is not str or type(content) is not str:
            field, bad = ("role", role) if type(role) is not str else ("content", content)
            raise BadField("invalid_type", f"{name}[{i}].{field} must be a string, got {show(bad)}")
        out.append({"role": role, "content": content})
    return tuple(out)


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
