"""Score and rerank lines (vLLM's batch bodies for /v1/score and /v1/rerank), and the ScoreResponse /
RerankResponse an answer is rendered as.

/v1/score: `queries` and `documents` (or their older names `text_1` and `text_2`), each a string or a
list of strings: one query against every document, or, with as many queries as documents, pair by pair.
/v1/rerank: one `query`, a list of `documents`, `top_n` (0 or absent: all). Both take an optional
`instruction` (the judgement's task; Qwen3-Reranker's default, DEFAULT_INSTRUCTION, otherwise). Every pair is
one part of its line (batchcli.parts): its judgement prompt, query first, so a query's pairs share
its prompt up to the document. The relevance of a pair is softmax(no, yes)[yes] of the model's logits.
Invariant: every body field is honoured, ignored (`user`), or an error for that line; a rendered body
has vLLM's ScoreResponse or RerankResponse shape (rerank results sorted by relevance, best first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from batchcli.formats.fields import BadField, as_int, as_text, show
from batchcli.formats.openai_body import check_body_extras
from batchcli.model_tasks import ModelTasks
from batchcli.pooling_params import PoolingParams
from batchcli.results import PooledResult

SCORE_KEYS = frozenset({"model", "queries", "documents", "text_1", "text_2", "instruction"})
RERANK_KEYS = frozenset({"model", "query", "documents", "top_n", "instruction"})
_IGNORED = frozenset({"user"})
MAX_PAIRS = 2048  # parts per line, as for embeddings
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def pair_text(instruction: str, query: str, document: str) -> str:
    """The user-side text of one (query, document) pair, which the judgement prompt frames."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


@dataclass(frozen=True, slots=True)
class ScoreEcho:
    """What a score line's answer needs besides the scores."""

    count: int  # pairs of the line
    noun: str = "pair"  # how an error names one part


@dataclass(frozen=True, slots=True)
class RerankEcho:
    """What a rerank line's answer needs besides the scores: the documents it returns, and how many."""

    documents: tuple[str, ...]
    top_n: int  # results returned, best first; 0: all
    noun: str = "document"

    def __post_init__(self) -> None:
        if not self.documents or self.top_n < 0:
            raise ValueError(f"a rerank needs documents and top_n >= 0, got {len(self.documents)} and {self.top_n}")

    @property
    def count(self) -> int:
        return len(self.documents)


def score_request(body: dict, tasks: ModelTasks | None) -> tuple[list[str], PoolingParams, ScoreEcho]:
    """The pair texts, the judge and the echo of a /v1/score body."""
    check_body_extras(body, SCORE_KEYS, _IGNORED, {})
    new, old = ("queries" in body or "documents" in body), ("text_1" in body or "text_2" in body)
    if new == old:
        raise BadField("missing_prompt", "body needs queries and documents (or text_1 and text_2), not both spellings")
    first, second = ("queries", "documents") if new else ("text_1", "text_2")
    queries, documents = (_texts(body.get(k), f"body.{k}") for k in (first, second))
    if len(queries) == 1:
        queries = queries * len(documents)
    if len(queries) != len(documents):
        raise BadField("invalid_value", f"body.{first} holds {len(queries)} texts and body.{second} {len(documents)}: "
                                        "give one query, or one per document")
    instruction = _instruction(body)
    pairs = [pair_text(instruction, q, d) for q, d in zip(queries, documents)]
    return pairs, _judge(tasks), ScoreEcho(len(pairs))


def rerank_request(body: dict, tasks: ModelTasks | None) -> tuple[list[str], PoolingParams, RerankEcho]:
    """The pair texts, the judge and the echo of a /v1/rerank body."""
    check_body_extras(body, RERANK_KEYS, _IGNORED, {})
    if "query" not in body or "documents" not in body:
        raise BadField("missing_prompt", "body.query and body.documents are required for /v1/rerank")
    query = as_text(body["query"], "body.query")
    documents = body["documents"]
    if type(documents) is not list:
        raise BadField("invalid_type", f"body.documents must be a list of strings, got {show(documents)}")
    documents = _texts(documents, "body.documents")
    top_n = body.get("top_n")
    top_n = 0 if top_n is None else as_int(top_n, "body.top_n")
    if top_n < 0:
        raise BadField("invalid_value", f"body.top_n must be >= 0 (0: all documents), got {top_n}")
    instruction = _instruction(body)
    pairs = [pair_text(instruction, query, d) for d in documents]
    return pairs, _judge(tasks), RerankEcho(tuple(documents), top_n)


def body_fields() -> str:
    """The --help words of score and rerank lines."""
    return (f"/v1/score bodies: {', '.join(sorted(SCORE_KEYS - {'model'}))}; /v1/rerank bodies: "
            f"{', '.join(sorted(RERANK_KEYS - {'model'}))} (ignored: {', '.join(sorted(_IGNORED))})")


def _texts(value: object, name: str) -> list[str]:
    if type(value) is str:
        return [as_text(value, name)]
    if type(value) is not list or not value:
        raise BadField("invalid_type", f"{name} must be a string or a non-empty list of strings, got {show(value)}")
    if len(value) > MAX_PAIRS:
        raise BadField("invalid_value", f"{name} holds {len(value)} texts; at most {MAX_PAIRS} per line")
    return [as_text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _instruction(body: dict) -> str:
    value = body.get("instruction")
    return DEFAULT_INSTRUCTION if value is None else as_text(value, "body.instruction")


def _judge(tasks: ModelTasks | None) -> PoolingParams:
    if tasks is None:
        raise BadField("unsupported", "scoring needs a model (none was given to the reader)")
    if isinstance(tasks.judge, str):
        raise BadField("unsupported", f"this model cannot judge relevance: {tasks.judge}")
    return tasks.judge


def relevance(part: PooledResult) -> float:
    """The probability of "yes" against "no": the part's values are the logits of (no, yes)."""
    no, yes = (float(v) for v in part.values)
    return 1.0 / (1.0 + math.exp(no - yes))


def _usage(parts: Sequence[PooledResult]) -> dict:
    prompt = sum(p.prompt_tokens for p in parts)
    return {"prompt_tokens": prompt, "total_tokens": prompt}


def score_body(parts: Sequence[PooledResult], digest: str, model: str, created: int) -> dict:
    """vLLM's ScoreResponse: one score per pair, in pair order."""
    data = [{"index": k, "object": "score", "score": relevance(p)} for k, p in enumerate(parts)]
    usage = {**_usage(parts), "completion_tokens": 0,
             "prompt_tokens_details": {"cached_tokens": sum(p.cached_tokens for p in parts)}}
    return {"id": f"score-{digest}", "object": "list", "created": created, "model": model, "data": data, "usage": usage}


def rerank_body(parts: Sequence[PooledResult], digest: str, model: str) -> dict:
    """vLLM's RerankResponse: the documents by relevance, best first (ties by index), the top_n of them."""
    echo = parts[0].request.echo
    assert isinstance(echo, RerankEcho), f"request {parts[0].request.id!r} carries no RerankEcho"
    scored = sorted(((relevance(p), k) for k, p in enumerate(parts)), key=lambda sk: (-sk[0], sk[1]))
    kept = scored[: echo.top_n or None]
    results = [{"index": k, "document": {"text": echo.documents[k]}, "relevance_score": s} for s, k in kept]
    return {"id": f"rerank-{digest}", "model": model, "usage": _usage(parts), "results": results}
