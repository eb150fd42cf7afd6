"""Per-request parameters the engine runs by: sampling settings and output constraints.

Plain frozen data shared by both halves: the reader builds them from a line, the plan counts their
output budgets, the engine samples by them. Invariant: a `SamplingParams` that exists is in range
(`__post_init__` refuses anything else with the bad value in the message).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_N = 128  # samples per request: OpenAI's own cap, and a bound on the memory one line can ask for
# Below these, `logits / temperature` overflows or the nucleus underflows in float32: such a line samples
# greedily, which is what it asks for in the limit.
MIN_TEMPERATURE = 1e-5
MIN_TOP_P = 1e-30
MAX_LOGPROBS = 20  # top alternatives per token, OpenAI's chat limit


@dataclass(frozen=True, slots=True)
class Constraint:
    """Constrained decoding: the output must match a grammar given as one of these kinds.

    `spec` is compact text (a JSON schema serialised in its own key order, a regex, a JSON list of
    choices, or "" for any JSON object), so equal constraints compare and hash equal and compile once.
    """

    kind: str  # "json_object" | "json_schema" | "regex" | "choice"
    spec: str

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINT_KINDS:
            raise ValueError(f"constraint kind must be one of {', '.join(CONSTRAINT_KINDS)}, got {self.kind!r}")


CONSTRAINT_KINDS = ("json_object", "json_schema", "regex", "choice")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling settings; CLI flags give defaults that a line's fields override.

    `max_tokens` None means "up to the model's context" (OpenAI's default); tokenization resolves it to
    an int, so the engine only ever sees ints. `logprobs` None returns none; k >= 0 returns each sampled
    token's log-probability and its k most likely alternatives.
    """

    max_tokens: int | None = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    min_p: float = 0.0  # drop tokens whose probability is below min_p x the top token's
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1
    ignore_eos: bool = False
    min_tokens: int = 0  # EOS and stop_token_ids are masked, and stop strings unchecked, until this many
    presence_penalty: float = 0.0  # OpenAI: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI: subtracted per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # transformers: divides positive / multiplies negative logits of seen tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), sorted by id
    logprobs: int | None = None
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            raise ValueError(f"temperature must be a finite number in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}], got {self.n}")
        if "" in self.stop:
            raise ValueError("stop must not contain an empty string")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise ValueError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 0 < self.repetition_penalty <= 10:
            raise ValueError(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        for token, bias in self.logit_bias:
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias for token {token} must be in [-100, 100], got {bias}")
        if any(t < 0 for t in self.stop_token_ids) or any(t < 0 for t, _ in self.logit_bias):
            raise ValueError(f"token ids must be >= 0, got {self.stop_token_ids or self.logit_bias}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE or self.top_p < MIN_TOP_P

    @property
    def penalised(self) -> bool:
        """Whether any penalty needs the tokens seen so far."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)
