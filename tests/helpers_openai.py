"""Checks that an OpenAI batch output line is what OpenAI would write: its body through the official
SDK's models (strict), its envelope and error lines by their documented shape. Score and rerank
bodies (vLLM's endpoints, no OpenAI type) are checked against models of vLLM's ScoreResponse and
RerankResponse written out here (vLLM itself is not installed with the test extras)."""

from __future__ import annotations

import base64

import numpy as np
from pydantic import BaseModel, ConfigDict

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
    kind = body.get("object")
    if kind == "list" and "id" not in body:
        validate_embeddings(body)
    elif kind == "list":
        assert body["id"].startswith("score-"), body["id"]
        ScoreResponse.model_validate(body, strict=True)
    elif kind is None:
        assert body["id"].startswith("rerank-"), body["id"]
        RerankResponse.model_validate(body, strict=True)
    elif body["object"] == "chat.completion":
        ChatCompletion.model_validate(body, strict=True)
    elif body["object"] == "response":
        Response.model_validate(body, strict=True)
    else:
        Completion.model_validate(body, strict=True)


def validate_embeddings(body: dict) -> None:
    """OpenAI's CreateEmbeddingResponse; base64 vectors are decoded first, as the SDK does for its users."""
    from openai.types import CreateEmbeddingResponse

    decoded = [{**d, "embedding": np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist()}
               if isinstance(d["embedding"], str) else d for d in body["data"]]
    CreateEmbeddingResponse.model_validate({**body, "data": decoded}, strict=True)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreData(_Strict):
    index: int
    object: str
    score: float


class ScoreUsage(_Strict):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int
    prompt_tokens_details: dict


class ScoreResponse(_Strict):
    """vLLM's ScoreResponse (entrypoints/openai protocol)."""

    id: str
    object: str
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


class RerankDocument(_Strict):
    text: str


class RerankResult(_Strict):
    index: int
    document: RerankDocument
    relevance_score: float


class RerankUsage(_Strict):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(_Strict):
    """vLLM's RerankResponse (entrypoints/openai protocol)."""

    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]
