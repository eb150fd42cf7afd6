"""From one step's logits to its sampled tokens: processing, grammar masks, sampling, log-probabilities.

`Decoder.sample` runs, for the step's sampled rows together: logits processors (bias, min_tokens,
penalties), grammar masks, temperature, the sampler, and the log-probs of the tokens drawn; it keeps
what each sequence needs across steps (RNG, grammar matcher, log-probs so far) until `release`.
Invariant: a failed row (non-finite distribution, a token its grammar refuses) is reported in
`failures` and never given a token the engine could mistake for a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from batchcli.engine.constraints import Guides, Matchers
from batchcli.engine.logits_processors import Row, process_, scale_by_temperature
from batchcli.engine.logprobs import token_logprobs
from batchcli.engine.sampler import Sampler
from batchcli.params import SamplingParams
from batchcli.engine.events import Completion, TokenLogprob


@dataclass(frozen=True, slots=True)
class Draw:
    """One sampled row: its token (None on failure) and, on failure, why."""

    token: int | None
    failure: str | None = None


class Decoder:
    def __init__(self, sampler: Sampler, grammars: Matchers | None, eos_ids: frozenset[int]) -> None:
        self._sampler = sampler
        self._guides = Guides(grammars)
        self._eos = tuple(sorted(eos_ids))
        self._logprobs: dict[int, list[TokenLogprob]] = {}

    @torch.inference_mode()  # the runner's logits are inference tensors; processing changes them in place
    def sample(self, logits: torch.Tensor, params: list[SamplingParams], seq_ids: list[int],
               sample_indices: list[int], generated: list[list[int]], prompts: list[np.ndarray]) -> list[Draw]:
        """One Draw per row of `logits` [N, V]; rows are (params[i], seq_ids[i], ...)."""
        rows = [Row(p, g, q) for p, g, q in zip(params, generated, prompts)]
        logits = logits.float()  # [N, V]; the runner makes a new tensor each step, so it is ours to change
        process_(logits, rows, self._eos)
        self._guides.mask_(logits, params, seq_ids)
        scaled = scale_by_temperature(logits, rows)  # [N, V]
        tokens = self._sampler.sample(scaled, params, seq_ids, sample_indices)
        for i, lp in enumerate(token_logprobs(scaled, tokens, params)):
            if lp is not None:
                self._logprobs.setdefault(seq_ids[i], []).append(lp)
        draws = []
        for i, token in enumerate(tokens):
            if token is None:
                draws.append(Draw(None, "the next-token distribution is not finite (NaN, infinite, or no token allowed)"))
                continue
            refused = self._guides.advance(seq_ids[i], params[i], token)
            draws.append(Draw(token) if refused is None else Draw(None, refused))
        return draws

    def finished(self, seq_id: int, completion: Completion, params: SamplingParams) -> Completion:
        """`completion` with its log-probs (a final EOS gets none, as its text is empty); state dropped."""
        got = self._logprobs.pop(seq_id, None)
        self.release(seq_id)
        if params.logprobs is None or got is None:
            return completion
        if completion.token_ids and completion.token_ids[-1] in self._eos and completion.stop_reason is None \
                and completion.finish_reason == "stop":
            got = got[:-1]
        return replace(completion, logprobs=tuple(got))

    def release(self, seq_id: int) -> None:
        self._sampler.release(seq_id)
        self._guides.release(seq_id)
        self._logprobs.pop(seq_id, None)
