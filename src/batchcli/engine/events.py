"""What the engine hands back, one event per request of a shard: its Answer (n completions with their
log-probabilities and token counts), its Pooled values (a prefill-only request: batchcli.pooling_params)
or a Refusal (why it could not be answered).

Plain data that pickles: a cluster's workers send events to the driver as they are. Invariant: an
event names its request by the index it has in the whole job (`Shard.index`), never by a position in
the shard, so however the job was cut the front half maps it back to one request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The log-probability of one sampled token and of its `k` most likely alternatives (best first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class Completion:
    """One sample of a request (a sample that cannot be drawn fails its whole request: see Refusal)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (EOS, a stop string or a stop token) | "length" (max_tokens)
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it; None at EOS
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per returned token, when asked for


@dataclass(frozen=True, slots=True)
class Answer:
    """A request finished: its n completions in sample order."""

    request: int  # index among the job's requests
    completions: tuple[Completion, ...]
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from shared KV instead of being computed for this request

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the engine could not answer (it cannot fit the KV pool even alone, the model's numbers
    broke): rendered as an error line, the rest of the batch goes on."""

    request: int  # index among the job's requests
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Pooled:
    """A pooled request finished: its values (its PoolingParams say what they are)."""

    request: int  # index among the job's requests
    values: np.ndarray  # float32 [k]: the pooled vector, or the logits of the task's token ids
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from shared KV instead of being computed for this request


Event: TypeAlias = Answer | Pooled | Refusal
