"""What an OpenAI batch line's body may hold, and how its fields become sampling changes.

Invariant: every body field is honoured (BODY_KEYS), ignored because it cannot change the tokens
(_IGNORED_BODY), accepted only at its no-op value (_NEUTRAL_BODY), or an error for that line.
"""

from __future__ import annotations

from batchcli.formats.constraint_fields import response_format_constraint
from batchcli.formats.fields import SAMPLING_KEYS, BadField, as_bool, as_int, sampling_overrides, show
from batchcli.requests import InputFormat
from batchcli.params import SamplingParams

# "model" is honoured by being checked: it must name the served model (reader, --served-model-name).
BODY_KEYS = {
    InputFormat.OPENAI_COMPLETION: frozenset({"model", "prompt", "response_format"}) | SAMPLING_KEYS,
    InputFormat.OPENAI_CHAT: frozenset({"model", "messages", "max_completion_tokens", "top_logprobs", "response_format",
                                        "tools", "tool_choice", "parallel_tool_calls"}) | SAMPLING_KEYS,
}
# OpenAI's defaults for OpenAI lines: sampling at temperature 1, output bounded by the context only.
OPENAI_DEFAULTS = SamplingParams(max_tokens=None, temperature=1.0)
OPENAI_MAX_STOP = 4
OPENAI_COMPLETION_MAX_LOGPROBS = 5
# Body fields with no effect on the tokens we produce.
_IGNORED_BODY = frozenset({"user", "metadata", "store", "service_tier", "stream_options"})
# Body fields we accept only at the value that leaves the output unchanged.
_NEUTRAL_BODY: dict[str, tuple] = {
    "stream": (None, False), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""), "prediction": (None,), "modalities": (None, ["text"]),
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "parallel_tool_calls": (None, True, False),
    "functions": (None, []), "function_call": (None, "none", "auto"),
}


def check_body_extras(body: dict, used: frozenset[str], ignored: frozenset[str] = _IGNORED_BODY,
                      neutrals: dict[str, tuple] | None = None) -> None:
    """Raise BadField for a body key that is neither used, ignored, nor at its no-op value."""
    for key in body.keys() - used:
        if key in ignored:
            continue
        neutral = (_NEUTRAL_BODY if neutrals is None else neutrals).get(key)
        if neutral is None:
            raise BadField("unknown_field", f"body.{key} is not a field this tool knows")
        if body[key] not in neutral:
            allowed = " or ".join(show(v) for v in neutral)
            raise BadField("unsupported", f"body.{key} = {show(body[key])} is not supported (only {allowed})")


def openai_overrides(body: dict, fmt: InputFormat) -> dict:
    """Sampling changes of an OpenAI body, with OpenAI's own spellings and limits."""
    logprobs = body.get("logprobs")
    changes = sampling_overrides({k: v for k, v in body.items() if k != "logprobs"})
    stops = changes.get("stop", ())
    if len(stops) > OPENAI_MAX_STOP:
        raise BadField("invalid_value", f"body.stop holds {len(stops)} strings; OpenAI allows at most {OPENAI_MAX_STOP}")
    changes["constraint"] = response_format_constraint(body.get("response_format"))
    if fmt is InputFormat.OPENAI_CHAT:
        if body.get("max_completion_tokens") is not None:  # the newer name wins, as in OpenAI's API
            changes["max_tokens"] = as_int(body["max_completion_tokens"], "body.max_completion_tokens")
        top = body.get("top_logprobs")
        wants = logprobs is not None and as_bool(logprobs, "body.logprobs")
        if top is not None and not wants:
            raise BadField("invalid_value", "body.top_logprobs needs body.logprobs set to true")
        changes["logprobs"] = (as_int(top, "body.top_logprobs") if top is not None else 0) if wants else None
    elif logprobs is not None:
        k = as_int(logprobs, "body.logprobs")
        if not 0 <= k <= OPENAI_COMPLETION_MAX_LOGPROBS:
            raise BadField("invalid_value", f"body.logprobs must be in [0, {OPENAI_COMPLETION_MAX_LOGPROBS}], got {k}")
        changes["logprobs"] = k
    return changes


def openai_body_fields() -> str:
    """Lines for --help: which OpenAI batch body fields are honoured, ignored, or accepted only at
    their no-op value, per endpoint family (anything else is an error line)."""
    from batchcli.formats import embeddings, responses, scores  # import this module: asked only for --help

    chat, completion = BODY_KEYS[InputFormat.OPENAI_CHAT], BODY_KEYS[InputFormat.OPENAI_COMPLETION]
    chat_only = sorted(chat & _NEUTRAL_BODY.keys())  # honoured by chat, no-op-only on completions
    return (f"body.model, when given, must be the served model (--served-model-name, default the model "
            f"directory's name); body fields honoured: {', '.join(sorted((chat | completion) - {'model'}))} "
            f"({', '.join(chat_only)}: chat only); ignored: {', '.join(sorted(_IGNORED_BODY))}; accepted at their "
            f"no-op value only: {', '.join(sorted(_NEUTRAL_BODY.keys() - chat))}; {responses.body_fields()}; "
            f"{embeddings.body_fields()}; {scores.body_fields()}")
