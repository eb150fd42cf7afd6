"""When a sequence is done, and what text it returns.

A sequence stops at an EOS token (unless `ignore_eos`), at a token of `stop_token_ids`, at the first
occurrence of a stop string in its decoded text (the text is cut before it), or at `max_tokens`; none
but `max_tokens` ends it before `min_tokens` tokens (the sampler masks EOS and stop tokens until then).
Token ids keep what was generated (EOS included, as transformers' `generate` returns it); the text
never shows special tokens.
"""

from __future__ import annotations

from typing import Callable

from batchcli.params import SamplingParams
from batchcli.engine.events import Completion

Decode = Callable[[list[int]], str]


class StopChecker:
    def __init__(self, decode: Decode, eos_ids: frozenset[int]) -> None:
        self._decode = decode
        self._eos = eos_ids

    def check(self, tokens: list[int], params: SamplingParams) -> Completion | None:
        """A finished Completion if the sequence that just generated tokens[-1] is done, else None."""
        if len(tokens) >= params.min_tokens:
            done = self._stopped(tokens, params)
            if done is not None:
                return done
        if len(tokens) >= params.max_tokens:
            return Completion(self._decode(tokens), tuple(tokens), "length")
        return None

    def _stopped(self, tokens: list[int], params: SamplingParams) -> Completion | None:
        last = tokens[-1]
        if last in params.stop_token_ids:
            return Completion(self._decode(tokens), tuple(tokens), "stop", stop_reason=last)
        if last in self._eos and not params.ignore_eos:
            return Completion(self._decode(tokens), tuple(tokens), "stop")
        if params.stop:
            text = self._decode(tokens)
            found = [(i, s) for s in params.stop if (i := text.find(s)) >= 0]
            if found:
                cut, stop = min(found)
                return Completion(text[:cut], tuple(tokens), "stop", stop_reason=stop)
        return None
