"""Grammar masks for constrained rows: one llguidance matcher per sequence, advanced by its sampled tokens.

Each step the matchers of the constrained rows fill one int32 bitmask [R, ceil(V/32)] (bit j of a row:
token j allowed), which is unpacked in one call and applied to those rows' logits at once; columns past
the tokenizer's vocabulary (padded embedding rows) are never allowed.
Invariant: a sequence's matcher has consumed exactly its generated tokens, in order (preemption keeps
generated tokens, so the matcher stays valid across it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from batchcli.params import Constraint, SamplingParams


class Matchers(Protocol):
    """Where the engine gets a fresh matcher per constrained sequence: the front half compiles each
    distinct constraint once for its tokenizer (planning.grammars.Grammars) and hands that in."""

    vocab_size: int  # the masks' width: the tokenizer's vocabulary (logits may be wider)

    def matcher(self, constraint: Constraint) -> object:  # an llguidance.LLMatcher at the grammar's start
        ...


class Guides:
    def __init__(self, grammars: Matchers | None) -> None:
        self._grammars = grammars
        self._matchers: dict[int, object] = {}

    def mask_(self, logits: torch.Tensor, params: list[SamplingParams], seq_ids: list[int]) -> None:
        """Set disallowed tokens of constrained rows of `logits` [N, V] to -inf."""
        picked = [i for i, p in enumerate(params) if p.constraint is not None]
        if not picked:
            return
        assert self._grammars is not None, "a constrained request reached the engine without compiled grammars"
        vocab = self._grammars.vocab_size
        bitmask = np.zeros((len(picked), -(-vocab // 32)), dtype=np.int32)  # [R, W]
        for j, i in enumerate(picked):
            # the matcher writes row j in place (C); llguidance.torch's wrapper does the same, but its
            # import compiles TorchScript and its CPU mask application is ~100x slower than the unpack below
            self._matcher(seq_ids[i], params[i]).unsafe_compute_mask_ptr(bitmask[j].ctypes.data, bitmask[j].nbytes)
        bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")  # [R, 32 W]
        width = logits.shape[1]
        allowed = torch.zeros(len(picked), width, dtype=torch.bool)  # [R, V]
        cols = min(width, vocab)
        allowed[:, :cols] = torch.from_numpy(bits[:, :cols]).bool()
        at = torch.tensor(picked, device=logits.device)
        logits[at] = logits[at].masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, seq_id: int, params: SamplingParams, token: int) -> str | None:
        """Feed a sampled token to the sequence's matcher; the library's complaint if it refuses it."""
        if params.constraint is None:
            return None
        matcher = self._matcher(seq_id, params)
        if matcher.is_stopped() or matcher.consume_token(token):
            return None
        return matcher.get_error() or f"token {token} does not fit the {params.constraint.kind}"

    def release(self, seq_id: int) -> None:
        self._matchers.pop(seq_id, None)

    def _matcher(self, seq_id: int, params: SamplingParams):  # noqa: ANN202 - an llguidance.LLMatcher
        matcher = self._matchers.get(seq_id)
        if matcher is None:
            matcher = self._matchers[seq_id] = self._grammars.matcher(params.constraint)
        return matcher
