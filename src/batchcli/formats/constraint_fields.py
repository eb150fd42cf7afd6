"""Checks of the structured-output fields of a line: plain `json_schema` / `regex` / `choice`, and
OpenAI's `response_format` (chat, completions) and `text.format` (responses), each turned into one `Constraint` (or None for free text).

Invariant: equal constraints get equal specs (the schema serialised compactly, keys in the user's order:
properties are generated in that order, so two orders are two grammars), so the grammar of each distinct
constraint is compiled once per job, however many lines ask for it.
"""

from __future__ import annotations

import orjson

from batchcli.formats.fields import BadField, show
from batchcli.params import Constraint

PLAIN_KEYS = frozenset({"json_schema", "regex", "choice"})
_SCHEMA_KEYS = frozenset({"name", "schema", "strict", "description"})


def plain_constraint(fields: dict) -> Constraint | None:
    """The constraint of a plain line: at most one of json_schema (an object), regex, choice."""
    given = sorted(k for k in PLAIN_KEYS & fields.keys() if fields[k] is not None)
    if len(given) > 1:
        raise BadField("invalid_value", f"give at most one of json_schema, regex, choice; got {', '.join(given)}")
    if not given:
        return None
    key = given[0]
    value = fields[key]
    if key == "json_schema":
        return Constraint("json_schema", _schema_text(value, "json_schema"))
    if key == "regex":
        if type(value) is not str or not value:
            raise BadField("invalid_type", f"regex must be a non-empty string, got {show(value)}")
        return Constraint("regex", value)
    if type(value) is not list or not value or not all(type(c) is str and c for c in value):
        raise BadField("invalid_type", f"choice must be a non-empty list of non-empty strings, got {show(value)}")
    return Constraint("choice", orjson.dumps(value).decode())


def response_format_constraint(value: object) -> Constraint | None:
    """OpenAI's body.response_format: text, json_object, or json_schema {name, schema, strict, description}."""
    name = "body.response_format"
    if _format_kind(value, name, {"json_schema"}) != "json_schema":
        return _plain_format(value)
    return _json_schema_constraint(value.get("json_schema"), f"{name}.json_schema")


def text_format_constraint(value: object) -> Constraint | None:
    """/v1/responses' body.text.format: text, json_object, or json_schema with {name, schema, strict,
    description} beside its type (flat, unlike chat's response_format)."""
    name = "body.text.format"
    if _format_kind(value, name, _SCHEMA_KEYS) != "json_schema":
        return _plain_format(value)
    for required in ("name", "schema"):  # OpenAI requires both, and the Response echo must carry them
        if required not in value:
            raise BadField("missing_required_parameter", f"{name}.{required} is required for type json_schema")
    if type(value["name"]) is not str:
        raise BadField("invalid_type", f"{name}.name must be a string, got {show(value['name'])}")
    return _json_schema_constraint({k: v for k, v in value.items() if k != "type"}, name)


def _format_kind(value: object, name: str, schema_keys: set[str] | frozenset[str]) -> str | None:
    """The checked type of an output format object (None when absent); json_schema may hold `schema_keys`."""
    if value is None:
        return None
    if type(value) is not dict or type(value.get("type")) is not str:
        raise BadField("invalid_type", f"{name} must be an object with a type, got {show(value)}")
    kind = value["type"]
    allowed = {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", *schema_keys}}.get(kind)
    if allowed is None:
        raise BadField("unsupported", f"{name}.type must be text, json_object or json_schema, got {show(kind)}")
    if not value.keys() <= allowed:
        raise BadField("unknown_field", f"{name} has unknown field(s): {', '.join(sorted(value.keys() - allowed))}")
    return kind


def _plain_format(value: dict | None) -> Constraint | None:
    return Constraint("json_object", "") if value is not None and value["type"] == "json_object" else None


def _json_schema_constraint(spec: object, name: str) -> Constraint:
    if type(spec) is not dict:
        raise BadField("invalid_type", f"{name} must be an object, got {show(spec)}")
    if not spec.keys() <= _SCHEMA_KEYS:
        unknown = ", ".join(sorted(spec.keys() - _SCHEMA_KEYS))
        raise BadField("unknown_field", f"{name} has unknown field(s): {unknown}")
    if "strict" in spec and type(spec["strict"]) is not bool:
        raise BadField("invalid_type", f"{name}.strict must be true or false, got {show(spec['strict'])}")
    # strict or not, the schema is enforced token by token: decoding never leaves it
    return Constraint("json_schema", _schema_text(spec.get("schema", {}), f"{name}.schema"))


def _schema_text(schema: object, name: str) -> str:
    if type(schema) is not dict:
        raise BadField("invalid_type", f"{name} must be a JSON schema object, got {show(schema)}")
    return orjson.dumps(schema).decode()
