"""What the engine hands back for one request: its completions and token usage, or why it failed."""

from __future__ import annotations

from dataclasses import dataclass

from batchcli.requests import Request


@dataclass(frozen=True, slots=True)
class Completion:
    """One sample of a request."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens)


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
class Failure:
    """A request the engine could not answer (it does not fit the KV budget, the model's numbers broke);
    rendered as an error line, the rest of the batch goes on."""

    request: Request
    code: str
    message: str
