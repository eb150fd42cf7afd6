"""Function tools of chat and /v1/responses lines: their definitions, `tool_choice`, and the grammar
a forced call is constrained to.

Chat tools nest under `function` ({"type": "function", "function": {"name", "parameters"}}, choice
{"type": "function", "function": {"name"}}); responses tools are flat ({"type": "function", "name",
"parameters"}, choice {"type": "function", "name"}). Both become one chat-shape tuple (what chat
templates take) inside a `ToolUse`.

Wire format of a forced answer (tool_choice "required" or named), the text the model is constrained
to write before it is rendered into OpenAI's shapes: one call is the JSON object
`{"name": NAME, "arguments": {...}}`, its arguments valid under that tool's `parameters`; when
parallel calls are allowed (`parallel_tool_calls`, default true, and not a named choice), a JSON list
of one or more such objects.
Invariant: equal tools and choices give equal constraints, so each set's grammar compiles once per job.
"""

from __future__ import annotations

import re

import orjson

from batchcli.formats.fields import BadField, show
from batchcli.requests import ToolUse
from batchcli.params import Constraint

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}
_NESTED_KEYS = frozenset({"name", "description", "parameters", "strict"})


def tool_use(body: dict, changes: dict, *, nested: bool) -> ToolUse | None:
    """The ToolUse of a body's tools / tool_choice / parallel_tool_calls (None: answer in plain text);
    a forced call's constraint goes into `changes` (which holds the body's structured-output one)."""
    use, constraint = _tool_use(body, nested)
    if use is not None and changes.get("constraint") is not None:
        raise BadField("unsupported", "tools cannot be combined with a structured-output format on one line")
    if constraint is not None:
        changes["constraint"] = constraint
    return use


def _tool_use(body: dict, nested: bool) -> tuple[ToolUse | None, Constraint | None]:
    tools = _definitions(body.get("tools"), nested)
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls", True)
    if type(parallel) is not bool and parallel is not None:
        raise BadField("invalid_type", f"body.parallel_tool_calls must be true or false, got {show(parallel)}")
    parallel = parallel is not False
    if not tools:
        if choice not in (None, "none", "auto"):
            raise BadField("invalid_value", f"body.tool_choice = {show(choice)} needs body.tools")
        return None, None
    if choice == "none":
        return None, None  # the tools stay out of the prompt and the answer is plain text
    if choice in (None, "auto"):
        return ToolUse("auto", tools, parallel), None
    if choice == "required":
        return ToolUse("forced", tools, parallel), _call_constraint(tools, parallel)
    name = _named_choice(choice, nested)
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise BadField("invalid_value", f"body.tool_choice names {name!r}, which is not among body.tools")
    return ToolUse("forced", tools, False), _call_constraint(tuple(chosen), False)


def _named_choice(choice: object, nested: bool) -> str:
    shape = '{"type": "function", "function": {"name": ...}}' if nested else '{"type": "function", "name": ...}'
    inner = choice.get("function") if nested and type(choice) is dict else choice
    if (type(choice) is not dict or choice.get("type") != "function" or type(inner) is not dict
            or type(inner.get("name")) is not str):
        raise BadField("invalid_value", f"body.tool_choice must be none, auto, required or {shape}, got {show(choice)}")
    return inner["name"]


def _definitions(value: object, nested: bool) -> tuple[dict, ...]:
    """Checked tool definitions in chat shape; None or [] is no tools."""
    if value is None:
        return ()
    if type(value) is not list:
        raise BadField("invalid_type", f"body.tools must be a list of function tools, got {show(value)}")
    out, names = [], set()
    for i, tool in enumerate(value):
        name = f"body.tools[{i}]"
        if type(tool) is not dict or tool.get("type") != "function":
            raise BadField("unsupported", f"{name} must be a function tool {{\"type\": \"function\", ...}}, got {show(tool)}")
        spec = tool.get("function") if nested else {k: v for k, v in tool.items() if k != "type"}
        if nested and type(spec) is not dict:
            raise BadField("invalid_type", f"{name}.function must be an object: chat tools nest under function, "
                                           f"{{\"type\": \"function\", \"function\": {{\"name\", \"parameters\"}}}}")
        if nested and tool.keys() != {"type", "function"}:
            raise BadField("unknown_field", f"{name} must hold only type and function, got {show(tool)}")
        where = f"{name}.function" if nested else name
        if not spec.keys() <= _NESTED_KEYS:
            raise BadField("unknown_field", f"{where} has unknown field(s): {', '.join(sorted(spec.keys() - _NESTED_KEYS))}")
        fname = spec.get("name")
        if type(fname) is not str or not _NAME.fullmatch(fname):
            raise BadField("invalid_value", f"{where}.name must be 1-64 letters, digits, _ or -, got {show(fname)}")
        if fname in names:
            raise BadField("invalid_value", f"{where}.name {fname!r} is defined twice")
        names.add(fname)
        parameters = spec.get("parameters", _EMPTY_PARAMETERS)
        if type(parameters) is not dict:
            raise BadField("invalid_type", f"{where}.parameters must be a JSON schema object, got {show(parameters)}")
        description = spec.get("description")
        if description is not None and type(description) is not str:
            raise BadField("invalid_type", f"{where}.description must be a string, got {show(description)}")
        if "strict" in spec and type(spec["strict"]) is not bool:
            raise BadField("invalid_type", f"{where}.strict must be true or false, got {show(spec['strict'])}")
        function = {"name": fname, **({"description": description} if description else {}), "parameters": parameters}
        out.append({"type": "function", "function": function})
    return tuple(out)


def _call_constraint(tools: tuple[dict, ...], parallel: bool) -> Constraint:
    """The JSON schema of the wire format over `tools`; arguments strict or not, decoding never leaves
    the tool's schema, as for response_format."""
    calls = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                               "arguments": t["function"]["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema = {"type": "array", "items": one, "minItems": 1} if parallel else one
    return Constraint("json_schema", orjson.dumps(schema).decode())


def template_tools(use: ToolUse | None, messages: tuple[dict, ...], template: str) -> list[dict] | None:
    """The tools to hand the chat template (None: none), read off the template's own text: a template
    that never names `tools` drops them silently, one that never names `tool_calls` cannot show a call.

    Raises BadField where the line needs what the template cannot render: an `auto` choice (the model
    would answer without ever seeing its tools), or a history holding tool calls or tool results."""
    takes_tools = re.search(r"\btools\b", template) is not None
    if any("tool_calls" in m or m["role"] == "tool" for m in messages) and not re.search(r"\btool_calls\b", template):
        raise BadField("unsupported", "this model's chat template cannot render assistant tool_calls or tool "
                                      "messages; give the history as plain user/assistant text")
    if use is None:
        return None
    if use.mode == "auto" and not takes_tools:
        raise BadField("unsupported", "this model's chat template takes no tools, so tool_choice auto (the default "
                                      "with tools) cannot work; use tool_choice required or a named function, "
                                      "whose output is constrained to a call")
    # a forced call is constrained whatever the template shows; where it takes tools the model sees them
    return list(use.tools) if takes_tools else None
