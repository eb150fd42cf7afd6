"""What the engine hands back for one request: its completions, their log-probabilities and token
usage, its pooled values, or why it failed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from batchcli.requests import Request


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The log-probability of one sampled token and of its `k` most likely alternatives (best first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class Completion:
    """One sample of a request (a sample that cannot be drawn fails its whole request: see Failure)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (EOS, a stop string or a stop token) | "length" (max_tokens)
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it; None at EOS
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per returned token, when asked for


@dataclass(frozen=True, slots=True)
class Result:
    """A finished request: `n` completions, in sample order."""

    request: Request
    completions: tuple[Completion, ...]
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from shared KV instead of being computed for this request

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


@dataclass(frozen=True, slots=True)
class PooledResult:
    """A finished pooled request (one part of its line, see batchcli.parts): its pooled values."""

    request: Request
    values: np.ndarray  # float32 [k]: the vector, or the logits of the pooling's token ids
    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class Failure:
    """A request the engine could not answer (it does not fit the KV budget, the model's numbers broke);
    rendered as an error line, the rest of the batch goes on."""

    request: Request
    code: str
    message: str
