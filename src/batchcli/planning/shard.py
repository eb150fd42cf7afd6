"""The engine's input at any process boundary: a Shard, plain arrays and parameters with their plan.

A shard is a set of requests with everything the engine needs to run them and nothing of the front
half (no tokenizer, no Request objects, no writer): the prompt tokens, the sampling parameters, the
pooling task of each prefill-only request (batchcli.pooling_params) and the plan over exactly these
requests. The engine's events (engine.events) name a request by its index in
the whole job (`Shard.index`), so the front half maps them back to its requests however the job was
split. Everything here pickles.

Invariant: a shard's plan is the plan of its own prompts (request i of the plan = position i of the
shard), made with the job's plan settings; a subset is replanned, never sliced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from batchcli.planning.plan import Plan, PlanSettings, build_plan
from batchcli.params import SamplingParams
from batchcli.pooling_params import PoolingParams
from batchcli.planning.token_arrays import TokenArrays


@dataclass(frozen=True, slots=True)
class Shard:
    index: tuple[int, ...]  # per request of the shard: its index among the job's requests (what events carry)
    tokens: TokenArrays  # prompt tokens, one entry per request
    params: tuple[SamplingParams, ...]
    plan: Plan  # over these requests (plan request i = shard position i)
    # per request, its pooling task (None: it generates); empty when no request of the shard pools
    pooling: tuple[PoolingParams | None, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.index) == len(self.tokens) == len(self.params) == self.plan.stats.requests:
            raise ValueError(f"a shard needs one index, prompt and parameter set per planned request; got "
                             f"{len(self.index)}, {len(self.tokens)}, {len(self.params)} for {self.plan.stats.requests}")
        if self.pooling and len(self.pooling) != len(self.index):
            raise ValueError(f"a shard's pooling tasks must be none or one per request; got {len(self.pooling)} "
                             f"for {len(self.index)}")
        if any(t is not None and (p.max_tokens, p.n) != (1, 1) for t, p in zip(self.pooling, self.params)):
            raise ValueError("a pooled request is planned as one output position: max_tokens 1, n 1")

    def tasks(self) -> tuple[PoolingParams | None, ...]:
        """Per request, its pooling task (None: it generates)."""
        return self.pooling or (None,) * len(self.index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def output_budget(self) -> int:
        """Output tokens the shard may generate at most: max_tokens x n over its requests."""
        return sum(p.max_tokens * p.n for p in self.params)

    @property
    def work_tokens(self) -> int:
        """Tokens running it computes at most: prefill after sharing + the output budget."""
        return self.plan.stats.physical_prefill_tokens + self.output_budget

    def subset(self, keep: Sequence[int]) -> Shard:
        """The requests at positions `keep` (ascending) as a shard of their own, replanned."""
        tokens = TokenArrays.from_lists([self.tokens[i] for i in keep])
        params = tuple(self.params[i] for i in keep)
        like = self.plan
        plan = plan_requests(tokens, params, like.settings, model=like.model, fingerprint=like.fingerprint,
                             errors=like.stats.errors)
        pooling = tuple(self.pooling[i] for i in keep) if self.pooling else ()
        return Shard(tuple(self.index[i] for i in keep), tokens, params, plan, pooling)


def plan_requests(tokens: TokenArrays, params: Sequence[SamplingParams], settings: PlanSettings, *,
                  model: str, fingerprint: str, errors: int) -> Plan:
    """The plan of prompts `tokens` with their sampling parameters (build_plan over max_tokens and n)."""
    max_tokens = np.fromiter((p.max_tokens for p in params), dtype=np.int64, count=len(params))
    n = np.fromiter((p.n for p in params), dtype=np.int64, count=len(params))
    return build_plan(tokens, max_tokens, n, settings, model=model, fingerprint=fingerprint, errors=errors)
