"""Embedding lines: OpenAI's /v1/embeddings body and the plain `{"id", "input"}` line, and the
embedding list an answer is rendered as.

`input` is a string, a list of strings, a list of token ids, or a list of token-id lists; each string
or token list is one prompt (one part of the line, batchcli.parts), pooled as the model says
(batchcli.model_tasks). `encoding_format` is "float" or "base64" (the little-endian float32 bytes, as
OpenAI sends them); `dimensions` keeps the first values and renormalises them, on models that declare
Matryoshka training. Invariant: every body field is honoured (EMBEDDINGS_KEYS), ignored (`user`), or
an error for that line; a rendered OpenAI body is an `openai.types.CreateEmbeddingResponse` once
base64 values are decoded (the suite validates it with the SDK).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from batchcli.formats.fields import BadField, as_int, as_text, show
from batchcli.formats.openai_body import check_body_extras
from batchcli.model_tasks import MATRYOSHKA_KEY, ST_CONFIG, ModelTasks
from batchcli.pooling_params import PoolingParams
from batchcli.results import PooledResult

EMBEDDINGS_KEYS = frozenset({"model", "input", "encoding_format", "dimensions"})
PLAIN_KEYS = frozenset({"id", "input", "encoding_format", "dimensions"})
_IGNORED = frozenset({"user"})
MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
ENCODINGS = ("float", "base64")


@dataclass(frozen=True, slots=True)
class EmbeddingEcho:
    """What an embeddings line's answer needs besides the vectors; shared by the line's parts."""

    encoding_format: str  # "float" | "base64"
    count: int  # inputs of the line
    single: bool  # the input was one string or one token list (plain lines answer `embedding`, not `embeddings`)
    noun: str = "input"  # how an error names one part

    def __post_init__(self) -> None:
        if self.encoding_format not in ENCODINGS or self.count < 1 or (self.single and self.count != 1):
            raise ValueError(f"bad embedding echo: {self}")


def embedding_request(fields: dict, tasks: ModelTasks | None, prefix: str,
                      ) -> tuple[list[str | tuple[int, ...]], PoolingParams, EmbeddingEcho]:
    """The prompts, the pooling and the echo of an embeddings body (`prefix` "body.") or plain line ("")."""
    if "input" not in fields:
        raise BadField("missing_prompt", f"{prefix}input is required for embeddings")
    inputs, single = _inputs(fields["input"], f"{prefix}input")
    encoding = fields.get("encoding_format")
    encoding = "float" if encoding is None else encoding
    if encoding not in ENCODINGS:
        raise BadField("invalid_value", f"{prefix}encoding_format must be \"float\" or \"base64\", got {show(encoding)}")
    pooling = _pooling(fields.get("dimensions"), tasks, f"{prefix}dimensions")
    return inputs, pooling, EmbeddingEcho(encoding, len(inputs), single)


def check_embeddings_body(body: dict) -> None:
    check_body_extras(body, EMBEDDINGS_KEYS, _IGNORED, {})


def body_fields() -> str:
    """The --help words of embeddings lines."""
    return (f"/v1/embeddings bodies (and plain {{\"id\", \"input\"}} lines): {', '.join(sorted(EMBEDDINGS_KEYS - {'model'}))}"
            f" (ignored: {', '.join(sorted(_IGNORED))})")


def _inputs(value: object, name: str) -> tuple[list[str | tuple[int, ...]], bool]:
    if type(value) is str:
        return [as_text(value, name)], True
    if type(value) is not list or not value:
        raise BadField("invalid_type", f"{name} must be a string, a list of strings, a list of token ids or a list "
                                       f"of token-id lists, got {show(value)}")
    if len(value) > MAX_INPUTS:
        raise BadField("invalid_value", f"{name} holds {len(value)} inputs; at most {MAX_INPUTS} per line")
    if all(type(t) is int for t in value):
        return [tuple(value)], True
    if all(type(t) is str for t in value):
        return [as_text(t, f"{name}[{i}]") for i, t in enumerate(value)], False
    if all(type(t) is list and t and all(type(x) is int for x in t) for t in value):
        return [tuple(t) for t in value], False
    raise BadField("invalid_type", f"{name} must be a string, a list of strings, a list of token ids or a list of "
                                   f"non-empty token-id lists, got {show(value)}")


def _pooling(dimensions: object, tasks: ModelTasks | None, name: str) -> PoolingParams:
    if tasks is None:
        raise BadField("unsupported", "embeddings need a model (none was given to the reader)")
    if isinstance(tasks.embed, str):
        raise BadField("unsupported", f"this model does not embed: {tasks.embed}")
    if dimensions is None or dimensions == tasks.hidden_size:
        return tasks.embed
    dimensions = as_int(dimensions, name)
    if not 1 <= dimensions <= tasks.hidden_size:
        raise BadField("invalid_value", f"{name} must be in [1, {tasks.hidden_size}] (the model's embedding size), "
                                        f"got {dimensions}")
    if not tasks.matryoshka:
        raise BadField("unsupported", f"{name} {dimensions}: this model does not declare Matryoshka training "
                                      f"({MATRYOSHKA_KEY} in {ST_CONFIG}); its embeddings have {tasks.hidden_size} values")
    return PoolingParams(tasks.embed.kind, normalize=True, dimensions=dimensions)


def _encoded(values: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")
    return values.tolist()


def _usage(parts: Sequence[PooledResult]) -> int:
    return sum(p.prompt_tokens for p in parts)


def embeddings_body(parts: Sequence[PooledResult], model: str) -> dict:
    """OpenAI's embedding list for a line's parts (in part order)."""
    echo = parts[0].request.echo
    assert isinstance(echo, EmbeddingEcho), f"request {parts[0].request.id!r} carries no EmbeddingEcho"
    data = [{"object": "embedding", "index": k, "embedding": _encoded(p.values, echo.encoding_format)}
            for k, p in enumerate(parts)]
    prompt = _usage(parts)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def plain_embeddings(parts: Sequence[PooledResult]) -> dict:
    """The plain output line: `embedding` for one input, `embeddings` (in input order) for a list."""
    request, echo = parts[0].request, parts[0].request.echo
    assert isinstance(echo, EmbeddingEcho), f"request {request.id!r} carries no EmbeddingEcho"
    vectors = [_encoded(p.values, echo.encoding_format) for p in parts]
    prompt = _usage(parts)
    usage = {"prompt_tokens": prompt, "total_tokens": prompt, "cached_tokens": sum(p.cached_tokens for p in parts)}
    return {"id": request.id, **({"embedding": vectors[0]} if echo.single else {"embeddings": vectors}), "usage": usage}
