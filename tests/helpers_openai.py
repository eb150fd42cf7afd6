"""Checks that an OpenAI batch output line is what OpenAI would write: its body through the official
SDK's models (strict), its envelope and error lines by their documented shape."""

from __future__ import annotations

OPENAI_RESULT_KEYS = {"id", "custom_id", "response", "error"}


def validate_openai_line(line: dict) -> None:
    """Raise if `line` (an OpenAI batch output record of ours) would not parse as OpenAI's."""
    from openai.types import Completion
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    assert isinstance(line["id"], str) and line["id"].startswith("batch_req_"), line
    assert line["custom_id"] is None or isinstance(line["custom_id"], str), line
    if line["response"] is None:
        # error lines: OpenAI's {code, message}; "line" is ours, for resume
        assert set(line) <= OPENAI_RESULT_KEYS | {"line"}, line
        assert set(line["error"]) == {"code", "message"} and all(isinstance(v, str) for v in line["error"].values())
        return
    assert set(line) == OPENAI_RESULT_KEYS and line["error"] is None, line
    response = line["response"]
    assert response["status_code"] == 200 and isinstance(response["request_id"], str)
    body = response["body"]
    if body["object"] == "chat.completion":
        ChatCompletion.model_validate(body, strict=True)
    elif body["object"] == "response":
        Response.model_validate(body, strict=True)
    else:
        Completion.model_validate(body, strict=True)
