"""Input reader: streams a JSONL file (or stdin) into `Request`s and `LineError`s.

Invariant: every non-blank physical line yields exactly one item, in input order, carrying its 1-based
physical line number (blank lines are skipped but counted), except that a valid line asking for
several prompts (embeddings inputs, score pairs, rerank documents) yields all its parts in part order
(batchcli.parts); a bad line never stops the reading, and no line is ever held whole in memory if it
is longer than `max_line_bytes`.

Plain text (`InputOptions(kind="text")`): each non-blank line is one prompt, a user message (after
the shared system message, if one is given), named `line-<N>`.

Ids: a simple, chat or pre-tokenized line is named by its `id`, an OpenAI batch line by its
`custom_id`; either must be a string or an integer (turned into its decimal string). A line without
one is named `line-<N>`, N its line number. A line whose id an earlier line already used gets a
`duplicate_id` error. A line is an OpenAI batch line when it has any of `custom_id`, `method`, `url`,
`body`; such lines' errors carry `custom_id` so they are rendered in the OpenAI error form. A plain
line with `input` is an embeddings line (formats/embeddings.py).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from batchcli.choices import InputKind, check
from batchcli.formats.constraint_fields import PLAIN_KEYS, plain_constraint
from batchcli.errors import InputUnreadableError, UsageError
from batchcli.formats.fields import (
    SAMPLING_KEYS, BadField, as_messages, as_text, as_token_ids, sampling_overrides, show,
)
from batchcli.formats.embeddings import PLAIN_KEYS as EMBED_KEYS, check_embeddings_body, embedding_request
from batchcli.formats.openai_body import BODY_KEYS, OPENAI_DEFAULTS, check_body_extras, openai_overrides
from batchcli.model_tasks import ModelTasks
from batchcli.parts import fan_out
from batchcli.requests import InputFormat, LineError, Request
from batchcli.params import SamplingParams
from batchcli.formats.responses import responses_request
from batchcli.formats.scores import rerank_request, score_request
from batchcli.formats.tools import tool_use
from batchcli.io.lines import physical_lines

DEFAULT_MAX_LINE_BYTES = 16 << 20
_PARAMS_CACHE_SIZE = 4096
_BOM = b"\xef\xbb\xbf"
_PROMPT_KEYS = ("prompt", "messages", "prompt_token_ids")
_LINE_KEYS = frozenset({"id", *_PROMPT_KEYS}) | SAMPLING_KEYS | PLAIN_KEYS
_OPENAI_KEYS = frozenset({"custom_id", "method", "url", "body"})
_POOLED = frozenset({InputFormat.OPENAI_EMBEDDINGS, InputFormat.OPENAI_SCORE, InputFormat.OPENAI_RERANK})
_OPENAI_URLS = {"/v1/completions": InputFormat.OPENAI_COMPLETION, "/v1/chat/completions": InputFormat.OPENAI_CHAT,
                "/v1/responses": InputFormat.OPENAI_RESPONSES, "/v1/embeddings": InputFormat.OPENAI_EMBEDDINGS,
                "/v1/score": InputFormat.OPENAI_SCORE, "/v1/rerank": InputFormat.OPENAI_RERANK}


@dataclass(frozen=True, slots=True)
class InputOptions:
    """How the input's lines are read: JSONL, or plain text with an optional shared system prompt."""

    kind: InputKind = "jsonl"
    system: str | None = None  # text input only: JSONL lines carry their own messages

    def __post_init__(self) -> None:
        check("--input-format", self.kind, InputKind)
        if self.system is not None and self.kind != "text":
            raise UsageError("--system needs --input-format text (JSONL lines carry their own messages)")


def read_requests(
    source: str | Path, defaults: SamplingParams, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    openai_defaults: SamplingParams = OPENAI_DEFAULTS, served_model: str | None = None,
    options: InputOptions = InputOptions(), tasks: ModelTasks | None = None,
) -> Iterator[Request | LineError]:
    """Yield one `Request` or `LineError` per non-blank line of `source` ("-" is stdin), or a line's parts.

    Plain lines start from `defaults`, OpenAI batch lines from `openai_defaults`. An OpenAI line whose
    body.model is not `served_model` gets a `model_not_found` error (None: any model name is accepted).
    Embeddings, score and rerank lines are pooled as `tasks` says (None: they are error lines).
    The file is opened here, so a missing input fails at the call, not at the first `next()`.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
    parser = (_TextParser(defaults, options.system) if options.kind == "text"
              else _LineParser(defaults, openai_defaults, served_model, tasks))
    if str(source) == "-":
        return _parse_stream(sys.stdin.buffer, parser, max_line_bytes, owned=False)
    try:
        stream = open(source, "rb", buffering=0)  # closed by the generator
    except OSError as exc:
        raise InputUnreadableError(f"cannot read input {str(source)!r}: {exc.strerror}") from None
    return _parse_stream(stream, parser, max_line_bytes, owned=True)


def _parse_stream(
    stream: IO[bytes], parser: _LineParser | _TextParser, max_line_bytes: int, *, owned: bool
) -> Iterator[Request | LineError]:
    try:
        for number, raw in enumerate(physical_lines(stream, max_line_bytes), start=1):
            if raw is None:
                message = f"line is longer than {max_line_bytes} bytes; skipped"
                yield LineError(f"line-{number}", number, "line_too_long", message)
                continue
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw and not raw.isspace():
                item = parser.parse(raw, number)
                if isinstance(item, tuple):
                    yield from item
                else:
                    yield item
    finally:
        if owned:
            stream.close()


class _TextParser:
    """Turns one line of plain text into a chat request: the shared system message, then the line."""

    def __init__(self, defaults: SamplingParams, system: str | None) -> None:
        self.defaults = defaults
        self.head = () if system is None else ({"role": "system", "content": system},)

    def parse(self, raw: bytes, line: int) -> Request | LineError:
        rid = f"line-{line}"
        try:
            text = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            return LineError(rid, line, "invalid_encoding", f"not valid UTF-8 at byte {exc.start}")
        return Request(rid, line, InputFormat.CHAT, self.defaults, messages=(*self.head, {"role": "user", "content": text}))


class _LineParser:
    """Turns one line's bytes into a Request or LineError; remembers ids seen and params built."""

    def __init__(self, defaults: SamplingParams, openai_defaults: SamplingParams, served_model: str | None,
                 tasks: ModelTasks | None) -> None:
        self.defaults = defaults
        self.tasks = tasks
        self.openai_defaults = openai_defaults
        self.served_model = served_model
        self.seen: dict[str, int] = {}  # id -> line that first used it
        # Many lines repeat the same overrides; SamplingParams is frozen, so one object serves them all.
        self.params_cache: dict[tuple[bool, frozenset], SamplingParams] = {}
        self.shared: dict[bytes, object] = {}  # equal echoes / tool sets by their JSON: one object for all lines

    def parse(self, raw: bytes, line: int) -> Request | LineError | tuple[Request, ...]:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # a broken line that names custom_id was meant as an OpenAI line: answer in OpenAI's form
            openai_like = b'"custom_id"' in raw
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                message = f"not valid UTF-8 at byte {bad.start}"
                return LineError(f"line-{line}", line, "invalid_encoding", message, openai=openai_like)
            message = f"not valid JSON (the input is JSONL, one JSON object per line): {exc}"
            return LineError(f"line-{line}", line, "invalid_json", message, openai=openai_like)
        if type(obj) is not dict:
            return LineError(f"line-{line}", line, "not_an_object", f"expected a JSON object, got {show(obj)}")
        openai = not _OPENAI_KEYS.isdisjoint(obj)
        id_key = "custom_id" if openai else "id"
        if openai and obj.get("custom_id") is None:
            return LineError(f"line-{line}", line, "missing_required_parameter", "custom_id is required", openai=True)
        rid = obj.get(id_key, f"line-{line}")
        if type(rid) is int:
            rid = str(rid)
        elif type(rid) is not str:
            fallback = f"line-{line}"
            message = f"{id_key} must be a string or an integer, got {show(rid)}"
            return LineError(fallback, line, "invalid_type", message, openai=openai)
        custom_id = rid if openai else None
        first = self.seen.setdefault(rid, line)
        if first != line:
            return LineError(rid, line, "duplicate_id", f"{id_key} {rid!r} already used on line {first}", custom_id)
        try:
            return self._openai(obj, rid, line) if openai else self._plain(obj, rid, line)
        except BadField as bad:
            return LineError(rid, line, bad.code, bad.message, custom_id, openai=openai)

    def _plain(self, obj: dict, rid: str, line: int) -> Request | tuple[Request, ...]:
        if "input" in obj:
            if not obj.keys() <= EMBED_KEYS:
                unknown = ", ".join(sorted(obj.keys() - EMBED_KEYS))
                raise BadField("unknown_field", f"unknown field(s) of an embeddings line: {unknown}; known: "
                                                f"{', '.join(sorted(EMBED_KEYS))}")
            prompts, pooling, echo = embedding_request(obj, self.tasks, "")
            return fan_out(rid, line, InputFormat.EMBED, prompts, pooling, echo, None, None)
        if not obj.keys() <= _LINE_KEYS:
            unknown = ", ".join(sorted(obj.keys() - _LINE_KEYS))
            raise BadField("unknown_field", f"unknown field(s): {unknown}; known: {', '.join(sorted(_LINE_KEYS))}")
        forms = ("prompt" in obj) + ("messages" in obj) + ("prompt_token_ids" in obj)
        if forms != 1:
            raise BadField("missing_prompt", f"need exactly one of prompt, messages, prompt_token_ids; got {forms}")
        changes = sampling_overrides(obj)
        changes["constraint"] = plain_constraint(obj)
        params = self._params(changes, self.defaults)
        if "prompt" in obj:
            return Request(rid, line, InputFormat.SIMPLE, params, prompt=as_text(obj["prompt"], "prompt"))
        if "messages" in obj:
            return Request(rid, line, InputFormat.CHAT, params, messages=as_messages(obj["messages"], "messages"))
        token_ids = as_token_ids(obj["prompt_token_ids"], "prompt_token_ids")
        return Request(rid, line, InputFormat.TOKENS, params, prompt_token_ids=token_ids)

    def _openai(self, obj: dict, rid: str, line: int) -> Request | tuple[Request, ...]:
        if not obj.keys() <= _OPENAI_KEYS:
            unknown = ", ".join(sorted(obj.keys() - _OPENAI_KEYS))
            raise BadField("unknown_field", f"unknown field(s): {unknown}; an OpenAI batch line has custom_id, method, url, body")
        url = obj.get("url")
        fmt = _OPENAI_URLS.get(url) if type(url) is str else None
        if fmt is None:
            urls = ", ".join(f'"{u}"' for u in _OPENAI_URLS)
            raise BadField("unsupported", f"url must be one of {urls}, got {show(url)}")
        if obj.get("method") != "POST":
            raise BadField("unsupported", f"method must be \"POST\", got {show(obj.get('method'))}")
        body = obj.get("body")
        if type(body) is not dict:
            raise BadField("invalid_type", f"body must be an object, got {show(body)}")
        model = self._model(body.get("model"))
        if fmt in _POOLED:
            return self._pooled(fmt, body, rid, line, model)
        if fmt is InputFormat.OPENAI_RESPONSES:
            messages, changes, use, echo = responses_request(body)
            params = self._params(changes, self.openai_defaults)
            echo = self._shared(orjson.dumps(echo), echo)
            return Request(rid, line, fmt, params, messages=messages, custom_id=rid, model=model,
                           tool_use=self._shared(orjson.dumps(use), use), echo=echo)
        check_body_extras(body, BODY_KEYS[fmt])
        changes = openai_overrides(body, fmt)
        if fmt is InputFormat.OPENAI_CHAT:
            if "messages" not in body:
                raise BadField("missing_prompt", "body.messages is required for /v1/chat/completions")
            messages = as_messages(body["messages"], "body.messages")
            use = tool_use(body, changes, nested=True)
            params = self._params(changes, self.openai_defaults)
            return Request(rid, line, fmt, params, messages=messages, custom_id=rid, model=model,
                           tool_use=self._shared(orjson.dumps(use), use))
        if "prompt" not in body:
            raise BadField("missing_prompt", "body.prompt is required for /v1/completions")
        prompt, params = body["prompt"], self._params(changes, self.openai_defaults)
        if type(prompt) is list:
            if not all(type(t) is int for t in prompt):
                raise BadField("unsupported", "body.prompt as a list must hold token ids; put one prompt per line")
            token_ids = as_token_ids(prompt, "body.prompt")
            return Request(rid, line, fmt, params, prompt_token_ids=token_ids, custom_id=rid, model=model)
        return Request(rid, line, fmt, params, prompt=as_text(prompt, "body.prompt"), custom_id=rid, model=model)

    def _pooled(self, fmt: InputFormat, body: dict, rid: str, line: int, model: str | None) -> tuple[Request, ...]:
        """The parts of an embeddings, score or rerank line (batchcli.parts)."""
        if fmt is InputFormat.OPENAI_EMBEDDINGS:
            check_embeddings_body(body)
            prompts, pooling, echo = embedding_request(body, self.tasks, "body.")
        elif fmt is InputFormat.OPENAI_SCORE:
            prompts, pooling, echo = score_request(body, self.tasks)
        else:
            prompts, pooling, echo = rerank_request(body, self.tasks)
        return fan_out(rid, line, fmt, prompts, pooling, echo, rid, model)

    def _model(self, model: object) -> str | None:
        if model is not None and type(model) is not str:
            raise BadField("invalid_type", f"body.model must be a string, got {show(model)}")
        if model is not None and self.served_model is not None and model != self.served_model:
            # never answer under another model's name (OpenAI and vLLM refuse the same way)
            raise BadField("model_not_found", f"body.model {model!r} is not served here; this run serves "
                             f"{self.served_model!r} (choose the name with --served-model-name)")
        return model

    def _shared(self, key: bytes, value: object) -> object:
        """The first object seen with this JSON form: a million lines with the same instructions or
        tools hold one copy of them, not a million."""
        if len(self.shared) >= _PARAMS_CACHE_SIZE:
            self.shared.clear()
        return self.shared.setdefault(key, value)

    def _params(self, changes: dict, defaults: SamplingParams) -> SamplingParams:
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return defaults
        # values are checked ints, floats, bools, tuples and Constraints: hashable
        key = (defaults is self.openai_defaults, frozenset(changes.items()))
        params = self.params_cache.get(key)
        if params is None:
            try:
                params = dataclasses.replace(defaults, **changes)
            except ValueError as exc:
                raise BadField("invalid_value", str(exc)) from None
            if len(self.params_cache) >= _PARAMS_CACHE_SIZE:  # e.g. a distinct seed per line
                self.params_cache.clear()
            self.params_cache[key] = params
        return params
