"""Output rendering: turns a `Result`, a pooled line's parts, or a `LineError` into the JSON object of
its output line.

Invariant: the output form follows the input form: OpenAI batch lines get OpenAI batch output lines
(success and error alike), all other lines the plain form. Every record carries the request's id
(`custom_id` for OpenAI lines), which is what a resumed run reads back to skip answered requests.
The same request always renders to the same object: OpenAI ids are derived from line and custom_id.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from batchcli.formats.embeddings import embeddings_body, plain_embeddings
from batchcli.formats.scores import rerank_body, score_body
from batchcli.requests import InputFormat, LineError
from batchcli.formats.responses import response_body
from batchcli.engine.events import Completion
from batchcli.results import PooledResult, Result
from batchcli.formats.tool_calls import chat_choice
from batchcli.formats.token_text import TokenText, chat_logprobs, completion_logprobs, plain_logprobs

_OPENAI = frozenset({InputFormat.OPENAI_COMPLETION, InputFormat.OPENAI_CHAT, InputFormat.OPENAI_RESPONSES,
                     InputFormat.OPENAI_EMBEDDINGS, InputFormat.OPENAI_SCORE, InputFormat.OPENAI_RERANK})


def render_result(result: Result, *, model: str = "", created: int = 0, names: TokenText | None = None) -> dict:
    """The output object of a finished request (an error line if one of its samples failed).

    `model` is the served model's name, written as OpenAI bodies' `model`; `created` is the Unix time
    stamped on OpenAI bodies (the caller passes the run's start; 0 keeps output reproducible); `names`
    gives token text for log-probabilities (needed when the request asked for them).
    """
    request = result.request
    assert len(result.completions) == request.params.n, (
        f"request {request.id!r} asked n={request.params.n}, got {len(result.completions)} completions"
    )
    assert request.params.logprobs is None or names is not None, f"request {request.id!r} needs token names"
    if request.format in _OPENAI:
        return _openai_result(result, model, created, names)
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "cached_tokens": result.cached_tokens,
    }
    if request.params.n == 1:
        return {"id": request.id, **_plain_choice(result.completions[0], names), "usage": usage}
    choices = [{"index": i, **_plain_choice(c, names)} for i, c in enumerate(result.completions)]
    return {"id": request.id, "choices": choices, "usage": usage}


def render_pooled(parts: Sequence[PooledResult], *, model: str = "", created: int = 0) -> dict:
    """The output object of a pooled line, from all of its parts in part order (batchcli.parts)."""
    request = parts[0].request
    assert [p.request.part for p in parts] == list(range(request.echo.count)), f"line {request.line} is not whole"
    if request.format is InputFormat.EMBED:
        return plain_embeddings(parts)
    custom_id = request.custom_id if request.custom_id is not None else request.id
    digest = _digest(request.line, custom_id)
    if request.format is InputFormat.OPENAI_EMBEDDINGS:
        body = embeddings_body(parts, model)
    elif request.format is InputFormat.OPENAI_SCORE:
        body = score_body(parts, digest, model, created)
    else:
        assert request.format is InputFormat.OPENAI_RERANK, f"line {request.line} ({request.format}) does not pool"
        body = rerank_body(parts, digest, model)
    return _envelope(custom_id, digest, body)


def _envelope(custom_id: str, digest: str, body: dict) -> dict:
    return {
        "id": f"batch_req_{digest}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{digest}", "body": body},
        "error": None,
    }


def _plain_choice(c: Completion, names: TokenText | None) -> dict:
    out = {"text": c.text, "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
    if c.logprobs is not None:
        out["logprobs"] = plain_logprobs(c.logprobs, names)
    return out


def render_error(err: LineError, fmt: InputFormat | None) -> dict:
    """The output object of a request that could not run.

    `fmt` is the request's format when it parsed, None when the line itself was bad; then the OpenAI
    form is still chosen when the reader saw an OpenAI batch line (it set `err.custom_id`).
    """
    error = {"code": err.code, "message": err.message}
    if fmt in _OPENAI or err.custom_id is not None or err.openai:
        # a parsed OpenAI request's id is its custom_id; a line that never gave one has custom_id null
        custom_id = err.custom_id if err.custom_id is not None or fmt not in _OPENAI else err.id
        batch_id = f"batch_req_{_digest(err.line, custom_id or '')}"
        return {"id": batch_id, "custom_id": custom_id, "response": None, "error": error, "line": err.line}
    return {"id": err.id, "line": err.line, "error": error}


def _openai_result(result: Result, model: str, created: int, names: TokenText | None) -> dict:
    request = result.request
    custom_id = request.custom_id if request.custom_id is not None else request.id
    digest = _digest(request.line, custom_id)
    if request.format is InputFormat.OPENAI_RESPONSES:
        body = response_body(result, digest, model, created)
    else:
        body = _completions_body(result, digest, model, created, names)
    return _envelope(custom_id, digest, body)


def _completions_body(result: Result, digest: str, model: str, created: int, names: TokenText | None) -> dict:
    """The ChatCompletion or Completion object of a chat or completions request."""
    if result.request.format is InputFormat.OPENAI_CHAT:
        kind, body_id = "chat.completion", f"chatcmpl-{digest}"
        choices = []
        for i, c in enumerate(result.completions):
            message, finish_reason = chat_choice(c, result.request.tool_use, f"call_{digest}_{i}")
            choices.append({"index": i, "message": message, "finish_reason": finish_reason,
                            "logprobs": None if c.logprobs is None else chat_logprobs(c.logprobs, names)})
    else:
        kind, body_id = "text_completion", f"cmpl-{digest}"
        choices = [
            {"index": i, "text": c.text, "finish_reason": c.finish_reason,
             "logprobs": None if c.logprobs is None else completion_logprobs(c.logprobs, names)}
            for i, c in enumerate(result.completions)
        ]
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }
    return {"id": body_id, "object": kind, "created": created, "model": model, "choices": choices, "usage": usage}


def _digest(line: int, custom_id: str) -> str:
    """24 hex digits, unique per (line, custom_id) and the same on every run."""
    return hashlib.blake2b(f"{line}\x00{custom_id}".encode(), digest_size=12).hexdigest()
