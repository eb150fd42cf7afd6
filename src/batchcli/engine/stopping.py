"""When a sequence is done, and what text it returns.

A sequence stops at an EOS token (unless `ignore_eos`), at the first occurrence of a stop string in
its decoded text (the text is cut before it), or at `max_tokens`. Token ids keep what was generated
(EOS included, as transformers' `generate` returns it); the text never shows special tokens.
"""

from __future__ import annotations

from typing import Callable

from batchcli.requests import SamplingParams
from batchcli.results import Completion

Decode = Callable[[list[int]], str]


class StopChecker:
    def __init__(self, decode: Decode, eos_ids: frozenset[int]) -> None:
        self._decode = decode
        self._eos = eos_ids

    def check(self, tokens: list[int], params: SamplingParams) -> Completion | None:
        """A finished Completion if the sequence that just generated tokens[-1] is done, else None."""
        last = tokens[-1]
        if last in self._eos and not params.ignore_eos:
            return Completion(self._decode(tokens), tuple(tokens), "stop")
        if params.stop:
            text = self._decode(tokens)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                return Completion(text[:cut], tuple(tokens), "stop")
        if len(tokens) >= params.max_tokens:
            return Completion(self._decode(tokens), tuple(tokens), "length")
        return None
