"""Tokenization of requests into compact token arrays, exactly as transformers' `generate` would see them.

Plain prompts (embedding inputs too) get the tokenizer's own special tokens (`add_special_tokens=True`);
chat messages are rendered by the tokenizer's chat template with `add_generation_prompt=True` and
encoded without adding special tokens again (the template writes them); a score or rerank pair is
framed as the model's judgement prompt (planning/judgement.py). Work is batched; a line whose tokens
cannot run (out-of-vocabulary ids, too long for the context) becomes a LineError, and the rest goes on. A text
too long to fit whatever it encodes to is refused before encoding (a token never covers more than
the longest vocabulary entry's characters), so a huge line costs its bytes, not a tokenizer's
working memory.
Invariant: `TokenizedRequests.requests[i]` owns prompt `tokens[i]`; prompt text is dropped once encoded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from batchcli.errors import ModelNotFoundError
from batchcli.model_config import load_config
from batchcli.formats.fields import BadField
from batchcli.requests import InputFormat, LineError, Request
from batchcli.planning.judgement import Judgement, is_qwen3_reranker
from batchcli.planning.token_arrays import TokenArrays
from batchcli.formats.tools import template_tools

CHUNK = 2048  # requests encoded per batched tokenizer call
JUDGED = (InputFormat.OPENAI_SCORE, InputFormat.OPENAI_RERANK)  # prompts are pair texts to frame as judgements
_TOKEN_FORMATS = (InputFormat.TOKENS, InputFormat.OPENAI_COMPLETION, InputFormat.EMBED, InputFormat.OPENAI_EMBEDDINGS)


@dataclass(frozen=True, slots=True)
class TokenizedRequests:
    requests: list[Request]  # valid requests, input order, prompt forms emptied (see Request.without_prompt)
    tokens: TokenArrays  # prompt i belongs to requests[i]
    errors: list[LineError]  # lines that failed reading or tokenization, input order


# Tokenizer classes AutoTokenizer resolves to the generic fast tokenizer: loading that class directly
# skips AutoTokenizer's config lookup, which imports ~1.4 s of model code (a third of a cold start).
_GENERIC_TOKENIZERS = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _load_tokenizer(model_dir: Path):  # noqa: ANN202 - a transformers tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    declared = _read_json(model_dir / "tokenizer_config.json").get("tokenizer_class")
    if declared in _GENERIC_TOKENIZERS and (model_dir / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def _why(model_dir: Path, exc: Exception) -> str:
    """transformers' reason on one line (its messages run over several), led by the likely cause."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    reason = reason if len(reason) <= 400 else reason[:397] + "..."
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return f"it has no tokenizer.json, tokenizer.model or vocab.json ({reason})"
    return reason


class PromptTokenizer:
    """A transformers tokenizer loaded from a local model directory, plus the model's context length
    and vocabulary size, read by the same config reader as the engine's so the two never disagree."""

    def __init__(self, model_dir: Path, max_context: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        arch = load_config(self.model_dir)
        try:
            self.tok = _load_tokenizer(self.model_dir)
        except Exception as e:  # transformers raises many kinds (OSError, ValueError, JSON errors) for bad files
            raise ModelNotFoundError(f"cannot load the tokenizer of {self.model_dir}: {_why(self.model_dir, e)}") from None
        self.max_context = max_context or arch.max_position_embeddings
        self.vocab_size = min(len(self.tok), arch.vocab_size)  # an id past either has no embedding or no text
        # x2: a normalizer may fold characters (e.g. strip accents) before the vocabulary is matched
        self._chars_per_token = 2 * max(map(len, self.tok.get_vocab()), default=1)
        self.judgement = Judgement(self.tok, is_qwen3_reranker(self.model_dir))

    def identity(self) -> str:
        """A short hash of the tokenizer's vocabulary, special tokens and chat template."""
        h = hashlib.sha256()
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            path = self.model_dir / name
            if path.is_file():
                h.update(path.read_bytes())
        return h.hexdigest()[:16]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def _encode_texts(self, texts: list[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        return self.tok(texts, add_special_tokens=special, return_attention_mask=False)["input_ids"]

    def _render_chat(self, req: Request) -> str:
        messages = list(req.messages)
        template = self.tok.chat_template or ""
        if "developer" not in template:  # OpenAI's newer name for the system role
            messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
        tools = template_tools(req.tool_use, req.messages, template)
        return self.tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)

    def encode_chunk(self, chunk: list[Request]) -> list[list[int] | np.ndarray | LineError]:
        """Token ids (or a LineError) for each request of the chunk, in order."""
        plain = [i for i, r in enumerate(chunk) if r.prompt is not None]
        chat: list[int] = []
        rendered: list[str] = []
        out: list[list[int] | np.ndarray | LineError] = [None] * len(chunk)  # type: ignore[list-item]
        for i, r in enumerate(chunk):
            if r.messages is not None:
                try:
                    text = self._render_chat(r)
                except BadField as bad:  # the line asks what this template cannot render
                    out[i] = LineError(r.id, r.line, bad.code, bad.message, r.custom_id)
                    continue
                except Exception as e:  # a template raising on bad roles is a per-line failure
                    out[i] = LineError(r.id, r.line, "chat_template_error", f"chat template failed: {e}", r.custom_id)
                    continue
                out[i] = self._surely_too_long(r, text)
                if out[i] is None:
                    rendered.append(text)
                    chat.append(i)
            elif r.prompt_token_ids is not None:
                out[i] = np.asarray(r.prompt_token_ids, dtype=np.int64)
            else:
                out[i] = self._surely_too_long(r, r.prompt)
        judged = [i for i in plain if out[i] is None and chunk[i].format in JUDGED]
        plain = [i for i in plain if out[i] is None and chunk[i].format not in JUDGED]
        for i, ids in zip(plain, self._encode_texts([chunk[i].prompt for i in plain], True)):
            out[i] = ids
        for i, ids in zip(judged, self.judgement.encode([chunk[i].prompt for i in judged])):
            out[i] = ids
        for i, ids in zip(chat, self._encode_texts(rendered, False)):
            out[i] = ids
        return [x if isinstance(x, LineError) else self._check(chunk[i], x) for i, x in enumerate(out)]

    def _surely_too_long(self, req: Request, text: str) -> LineError | None:
        at_least = len(text) // self._chars_per_token
        budget = req.params.max_tokens or 0  # None (OpenAI lines): the rest of the context, so the prompt alone
        if at_least + budget <= self.max_context:
            return None
        if budget >= self.max_context:  # the prompt's length does not matter
            return LineError(req.id, req.line, "context_length_exceeded", f"max_tokens {budget} leaves no room for "
                             f"a prompt in the model's context of {self.max_context} tokens", req.custom_id)
        return LineError(req.id, req.line, "context_length_exceeded",
                         f"prompt of {len(text):,} characters is at least {at_least:,} tokens; + max_tokens "
                         f"{budget} exceeds the model's context of {self.max_context}", req.custom_id)

    def _check(self, req: Request, ids: list[int] | np.ndarray) -> np.ndarray | LineError:
        arr = np.asarray(ids, dtype=np.int64)
        if len(arr) == 0:
            return LineError(req.id, req.line, "empty_prompt", "the prompt encodes to no tokens", req.custom_id)
        if req.format in _TOKEN_FORMATS and (arr.max() >= self.vocab_size or arr.min() < 0):
            bad = int(arr[(arr >= self.vocab_size) | (arr < 0)][0])
            return LineError(req.id, req.line, "invalid_token_id",
                             f"token id {bad} is outside the vocabulary (size {self.vocab_size})", req.custom_id)
        named = [t for t, _ in req.params.logit_bias] + list(req.params.stop_token_ids)
        if named and max(named) >= self.vocab_size:
            return LineError(req.id, req.line, "invalid_token_id", f"logit_bias / stop_token_ids name token "
                             f"{max(named)}, outside the vocabulary (size {self.vocab_size})", req.custom_id)
        if len(arr) + (req.params.max_tokens or 1) > self.max_context:
            return LineError(req.id, req.line, "context_length_exceeded",
                             f"prompt of {len(arr)} tokens + max_tokens {req.params.max_tokens or 1} exceeds the "
                             f"model's context of {self.max_context}", req.custom_id)
        return arr.astype(np.int32)

    def resolved(self, req: Request, prompt_len: int) -> Request:
        """`req` with max_tokens None (OpenAI's default) turned into the context left after the prompt."""
        if req.params.max_tokens is not None:
            return req
        return replace(req, params=replace(req.params, max_tokens=self.max_context - prompt_len))


def tokenize_requests(items: Iterable[Request | LineError], tokenizer: PromptTokenizer) -> TokenizedRequests:
    """Encode a stream of parsed lines in batches; errors pass through in input order."""
    requests: list[Request] = []
    errors: list[LineError] = []
    arrays: list[np.ndarray] = []
    chunk: list[Request] = []

    def flush() -> None:
        for req, enc in zip(chunk, tokenizer.encode_chunk(chunk)):
            if isinstance(enc, LineError):
                errors.append(enc)
            else:
                requests.append(tokenizer.resolved(req, len(enc)).without_prompt())
                arrays.append(enc)
        chunk.clear()

    for item in items:
        if isinstance(item, LineError):
            errors.append(item)
            continue
        chunk.append(item)
        if len(chunk) >= CHUNK:
            flush()
    flush()
    errors.sort(key=lambda e: e.line)
    return TokenizedRequests(requests, TokenArrays.from_lists(arrays), errors)
