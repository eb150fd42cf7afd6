"""Typed request data: what one input line asks for once parsed.

Invariant: a `Request` the reader builds is valid on its own (parameters in range, exactly one prompt
form); anything wrong with a line becomes a `LineError` instead. After tokenization the front half keeps
only `without_prompt()` copies: same id, form and parameters, prompt content emptied (the token arrays
hold the prompt from then on), so such a Request cannot be tokenized again.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

from batchcli.pooling_params import PoolingParams

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
    OPENAI_RESPONSES = "openai-responses"  # OpenAI batch, url /v1/responses
    EMBED = "embed"  # {"input": ...}: embeddings, plain form (formats/embeddings.py)
    OPENAI_EMBEDDINGS = "openai-embeddings"  # OpenAI batch, url /v1/embeddings
    OPENAI_SCORE = "openai-score"  # vLLM's batch url /v1/score (formats/scores.py)
    OPENAI_RERANK = "openai-rerank"  # vLLM's batch url /v1/rerank


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


@dataclass(frozen=True, slots=True)
class ToolUse:
    """How a line's answer may call its tools (tools.py builds it; one object per distinct set of tools).

    `forced` (tool_choice required or a named function): the output is constrained to calls, written
    as tools.py's wire format; `auto`: the model decides, its calls are parsed from its text.
    """

    mode: str  # "forced" | "auto"
    tools: tuple[dict, ...]  # chat-shape definitions {"type": "function", "function": {...}} for the template
    parallel: bool  # more than one call per answer allowed

    def __post_init__(self) -> None:
        if self.mode not in ("forced", "auto"):
            raise ValueError(f"tool use mode must be forced or auto, got {self.mode!r}")


@dataclass(frozen=True, slots=True)
class Request:
    """One valid input line, or one part of a line that asks for several prompts (an embeddings line's
    inputs, a score line's pairs, a rerank line's documents: batchcli.parts); the parts of a line
    share its id and line number and are told apart by `part`. Exactly one of prompt, messages,
    prompt_token_ids is set. A pooled request (`pooling` set) is planned as one output position."""

    id: str
    line: int  # 1-based line number in the input
    format: InputFormat
    params: SamplingParams
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    custom_id: str | None = None  # OpenAI batch only
    model: str | None = field(default=None, compare=False)  # OpenAI body "model" as asked (the reader checks it)
    tool_use: ToolUse | None = None  # the line offers tools the answer may call
    # what the answer repeats or needs besides its values: /v1/responses' ResponseEcho, a pooled line's
    # echo (formats/embeddings.py, formats/scores.py); one object for all lines or parts that share it
    echo: object | None = field(default=None, compare=False)
    pooling: PoolingParams | None = None  # a prefill-only request: what the engine pools (None: it generates)
    part: int = 0  # index of this prompt among its line's prompts

    def __post_init__(self) -> None:
        forms = (self.prompt is not None) + (self.messages is not None) + (self.prompt_token_ids is not None)
        if forms != 1:
            raise ValueError(f"request {self.id!r} must carry exactly one prompt form, got {forms}")
        if self.pooling is not None and (self.params.max_tokens, self.params.n) != (1, 1):
            raise ValueError(f"request {self.id!r} pools: it must be planned with max_tokens 1 and n 1")

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
    """A line that cannot run: rendered as `{"id", "line", "error": {"code", "message"}}`, or in OpenAI's
    error form when it came from an OpenAI batch line (`custom_id` set, or `openai` when it has none)."""

    id: str
    line: int
    code: str
    message: str
    custom_id: str | None = None
    openai: bool = False
