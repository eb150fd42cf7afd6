"""Lines that ask for several prompts: fan-out into parts, fan-in of their answers into one line.

An embeddings line with N inputs, a score line with N pairs and a rerank line with N documents are
each N pooled requests internally ("parts", `Request.part` 0..N-1, all with the line's id and line
number, in part order), so every prompt is planned, shared and scheduled on its own. Their answer is
one output line, which needs every part.

Invariants: a line is answered whole or not at all, exactly once. Reading yields all of a line's parts
or one LineError for it; after tokenization `whole_lines` keeps a line's parts only if every one of
them encoded (else one error line for the line, naming the first bad part); while the job runs,
`LineJoiner` writes a line's output when its last part is in, or its error line at its first failed
part (the later parts are then dropped). As a line is written in one record, a run killed before its
last part loses the line, and `--resume` (which skips answered ids) reruns all of its parts.
"""

from __future__ import annotations

from typing import Callable

from batchcli.planning.token_arrays import TokenArrays
from batchcli.planning.tokenize import TokenizedRequests
from batchcli.pooling_params import PoolingParams
from batchcli.params import SamplingParams
from batchcli.requests import InputFormat, LineError, Request
from batchcli.results import Failure, PooledResult

PREFILL_ONLY = SamplingParams(max_tokens=1)  # what a part is planned as: its prompt and one position


def fan_out(rid: str, line: int, fmt: InputFormat, prompts: list[str | tuple[int, ...]], pooling: PoolingParams,
            echo: object, custom_id: str | None, model: str | None) -> tuple[Request, ...]:
    """One pooled request per prompt (a text, or token ids), all sharing the line's id, number and echo."""
    return tuple(
        Request(rid, line, fmt, PREFILL_ONLY, custom_id=custom_id, model=model, echo=echo, pooling=pooling, part=k,
                **({"prompt": p} if type(p) is str else {"prompt_token_ids": p}))
        for k, p in enumerate(prompts))


def whole_lines(tokenized: TokenizedRequests) -> TokenizedRequests:
    """The requests without the parts of lines some part of which failed to encode; one error per line."""
    bad = {e.line for e in tokenized.errors}
    parted = {r.line for r in tokenized.requests if r.pooling is not None}
    if not bad & parted:
        return tokenized
    keep = [i for i, r in enumerate(tokenized.requests) if r.line not in bad]
    errors, seen = [], set()
    for e in tokenized.errors:  # sorted by line, a line's parts in part order
        if e.line not in seen:
            seen.add(e.line)
            errors.append(e)
    tokens = TokenArrays.from_lists([tokenized.tokens[i] for i in keep])
    return TokenizedRequests([tokenized.requests[i] for i in keep], tokens, errors)


def part_error(request: Request, code: str, message: str) -> LineError:
    """The line's error for a failure of one of its parts, naming the part when the line has several."""
    echo = request.echo
    many = getattr(echo, "count", 1) > 1
    text = f"{getattr(echo, 'noun', 'part')} {request.part}: {message}" if many else message
    return LineError(request.id, request.line, code, text, request.custom_id)


class LineJoiner:
    """Collects the answers of pooled lines' parts; a line's record comes out when it is complete."""

    def __init__(self, render: Callable[[list[PooledResult]], dict], render_error: Callable[[LineError, InputFormat], dict]) -> None:
        self._render, self._render_error = render, render_error
        self._parts: dict[int, dict[int, PooledResult]] = {}  # line -> part -> result
        self._failed: set[int] = set()  # lines already answered with an error

    def add(self, record: PooledResult | Failure) -> dict | None:
        """The line's output record if `record` completes it (or is its first failure), else None."""
        request = record.request
        if request.line in self._failed:
            return None
        if isinstance(record, Failure):
            self._failed.add(request.line)
            self._parts.pop(request.line, None)
            return self._render_error(part_error(request, record.code, record.message), request.format)
        got = self._parts.setdefault(request.line, {})
        got[request.part] = record
        if len(got) < request.echo.count:
            return None
        del self._parts[request.line]
        return self._render([got[k] for k in range(len(got))])
