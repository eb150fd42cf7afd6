"""The front half's record of a finished request: the engine's event (engine.events) beside the Request
it answers, which the renderers need (id, format, parameters); the event's facts are read through,
never copied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from batchcli.engine.events import Answer, Completion, Event, Pooled, Refusal
from batchcli.requests import Request


@dataclass(frozen=True, slots=True)
class Result:
    """A finished request: its `n` completions, in sample order."""

    request: Request
    answer: Answer

    @property
    def completions(self) -> tuple[Completion, ...]:
        return self.answer.completions

    @property
    def prompt_tokens(self) -> int:
        return self.answer.prompt_tokens

    @property
    def cached_tokens(self) -> int:
        return self.answer.cached_tokens

    @property
    def completion_tokens(self) -> int:
        return self.answer.completion_tokens


@dataclass(frozen=True, slots=True)
class PooledResult:
    """A finished pooled request (one part of its line, see batchcli.parts): its pooled values."""

    request: Request
    pooled: Pooled

    @property
    def values(self) -> np.ndarray:
        """float32 [k]: the vector, or the logits of the pooling's token ids."""
        return self.pooled.values

    @property
    def prompt_tokens(self) -> int:
        return self.pooled.prompt_tokens

    @property
    def cached_tokens(self) -> int:
        return self.pooled.cached_tokens


@dataclass(frozen=True, slots=True)
class Failure:
    """A request the engine refused: rendered as an error line."""

    request: Request
    refusal: Refusal

    @property
    def code(self) -> str:
        return self.refusal.code

    @property
    def message(self) -> str:
        return self.refusal.message


def resolve(event: Event, requests: Sequence[Request]) -> Result | PooledResult | Failure:
    """The record of `event`, `requests` being the job's requests (what event indices name)."""
    request = requests[event.request]
    if isinstance(event, Pooled):
        return PooledResult(request, event)
    return Failure(request, event) if isinstance(event, Refusal) else Result(request, event)
