"""The engine's second kind of work: a prefill-only request whose output is a pooled vector, not tokens.

A pooled request is planned and scheduled like a generation request of one output position
(max_tokens 1, n 1): it needs exactly its prompt's KV, and at its last prompt token, instead of
sampling, the engine hands back either the final hidden state pooled over the prompt (`last`: the
last token's; `mean`: the mean over every prompt token), optionally truncated to `dimensions` and
L2-normalised, or the logits of a few named tokens at the last position (`logits`: a yes/no judge).
Invariant: a `PoolingParams` is valid on its own; the engine needs nothing else to pool a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

PoolKind = Literal["last", "mean", "logits"]


@dataclass(frozen=True, slots=True)
class PoolingParams:
    kind: PoolKind
    normalize: bool = False  # L2-normalise the (truncated) vector
    dimensions: int | None = None  # keep the first `dimensions` values (Matryoshka); None: all
    token_ids: tuple[int, ...] = ()  # kind "logits": the tokens whose logits come back, in this order

    def __post_init__(self) -> None:
        if self.kind not in get_args(PoolKind):
            raise ValueError(f"pooling kind must be one of {', '.join(get_args(PoolKind))}, got {self.kind!r}")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {self.dimensions}")
        if (self.kind == "logits") != bool(self.token_ids):
            raise ValueError(f"token_ids are for kind 'logits' only, and it needs them; got kind {self.kind!r} "
                             f"with token_ids {self.token_ids}")
        if self.kind == "logits" and (self.normalize or self.dimensions is not None):
            raise ValueError("kind 'logits' returns raw logits: no normalize or dimensions")
        if any(t < 0 for t in self.token_ids):
            raise ValueError(f"token ids must be >= 0, got {self.token_ids}")

    @property
    def sums(self) -> bool:
        """Whether the pooled value needs every prompt token's hidden state (else the last one's)."""
        return self.kind == "mean"
