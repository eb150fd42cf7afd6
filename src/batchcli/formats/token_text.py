"""Log-probabilities rendered with token text: the plain form and OpenAI's chat and completions shapes.

A token's text is its own bytes (a byte-level token may hold part of a UTF-8 character: its text then
shows the bytes as \\xNN escapes, its `bytes` the exact values, as OpenAI does); special tokens show
their name.
Invariant: each shape lists one entry per returned token, in order, and an entry's alternatives are
best first.
"""

from __future__ import annotations

from functools import lru_cache

from batchcli.engine.events import TokenLogprob

_SPECIAL_MARK = b"\xff"  # llguidance prefixes a special token's name with this byte


class TokenText:
    """Token id -> bytes and text, for one tokenizer (a transformers tokenizer)."""

    def __init__(self, hf_tokenizer: object) -> None:
        import llguidance.hf

        self._hf = hf_tokenizer
        self._ll = llguidance.hf.from_tokenizer(hf_tokenizer)
        self.bytes_of = lru_cache(maxsize=1 << 16)(self._bytes)

    def _bytes(self, token: int) -> bytes:
        raw = self._ll.decode_bytes([token])
        if raw.startswith(_SPECIAL_MARK) or not raw and token < len(self._hf):
            return str(self._hf.convert_ids_to_tokens(token)).encode()
        return raw

    def text_of(self, token: int) -> str:
        return self.bytes_of(token).decode("utf-8", errors="backslashreplace")


def plain_logprobs(entries: tuple[TokenLogprob, ...], names: TokenText) -> list[dict]:
    def one(token: int, logprob: float) -> dict:
        return {"token_id": token, "token": names.text_of(token), "logprob": logprob}

    return [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]


def chat_logprobs(entries: tuple[TokenLogprob, ...], names: TokenText) -> dict:
    """OpenAI chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal"}."""
    def one(token: int, logprob: float) -> dict:
        return {"token": names.text_of(token), "logprob": logprob, "bytes": list(names.bytes_of(token))}

    content = [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: tuple[TokenLogprob, ...], names: TokenText) -> dict:
    """OpenAI completions: tokens, token_logprobs, top_logprobs ({text: logprob}), text_offset (from 0)."""
    tokens = [names.text_of(e.token) for e in entries]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    top = [{names.text_of(t): lp for t, lp in e.top} for e in entries]
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries], "top_logprobs": top,
            "text_offset": offsets}
