"""Typed request data: what one input line asks for once parsed.

Invariant: a `Request` is always valid on its own (parameters in range, exactly one prompt form);
anything wrong with a line becomes a `LineError` instead, never a half-filled `Request`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

MAX_N = 128  # samples per request: OpenAI's own cap, and a bound on the memory one line can ask for
# Below these, `logits / temperature` overflows or the nucleus underflows in float32: such a line samples
# greedily, which is what it asks for in the limit.
MIN_TEMPERATURE = 1e-5
MIN_TOP_P = 1e-30


class InputFormat(enum.Enum):
    """Which line contract a request came in; decides how its output line is rendered."""

    SIMPLE = "simple"  # {"prompt": ...}
    CHAT = "chat"  # {"messages": [...]}
    TOKENS = "tokens"  # {"prompt_token_ids": [...]}
    OPENAI_COMPLETION = "openai-completion"  # OpenAI batch, url /v1/completions
    OPENAI_CHAT = "openai-chat"  # OpenAI batch, url /v1/chat/completions


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling settings; CLI flags give defaults that a line's fields override."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}], got {self.n}")
        if "" in self.stop:
            raise ValueError("stop must not contain an empty string")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE or self.top_p < MIN_TOP_P


@dataclass(frozen=True, slots=True)
class Request:
    """One valid input line. Exactly one of prompt, messages, prompt_token_ids is set."""

    id: str
    line: int  # 1-based line number in the input
    format: InputFormat
    params: SamplingParams
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    custom_id: str | None = None  # OpenAI batch only
    model: str | None = field(default=None, compare=False)  # OpenAI batch body "model", echoed back

    def __post_init__(self) -> None:
        forms = (self.prompt is not None) + (self.messages is not None) + (self.prompt_token_ids is not None)
        if forms != 1:
            raise ValueError(f"request {self.id!r} must carry exactly one prompt form, got {forms}")

    def without_prompt(self) -> Request:
        """This request with its prompt content emptied (form kept): after tokenization only the
        token arrays are needed, and a million prompts' text would not fit in memory twice."""
        return replace(
            self,
            prompt=None if self.prompt is None else "",
            messages=None if self.messages is None else (),
            prompt_token_ids=None if self.prompt_token_ids is None else (),
        )


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that cannot run: rendered as `{"id", "line", "error": {"code", "message"}}`."""

    id: str
    line: int
    code: str
    message: str
    custom_id: str | None = None
