"""Typed request data: what one input line asks for once parsed.

Invariant: a `Request` the reader builds is valid on its own (parameters in range, exactly one prompt
form); anything wrong with a line becomes a `LineError` instead. After tokenization the front half keeps
only `without_prompt()` copies: same id, form and parameters, prompt content emptied (the token arrays
hold the prompt from then on), so such a Request cannot be tokenized again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from batchcli.params import SamplingParams
from batchcli.pooling_params import PoolingParams


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


@dataclass(frozen=True, slots=True)
class ToolUse:
    """How a line's answer may call its tools (formats/tools.py builds it; one object per distinct set of tools).

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
