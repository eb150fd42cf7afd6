"""The attention backend contract: plan once per step, run per layer (FlashInfer's plan/run).

`plan(meta)` turns the step's metadata into whatever the backend derives from it (tile lists, gather
indices, work items), on the host and copied to the device once; `run(q, k_cache, v_cache, plan,
scale)` then attends one layer: q `[T, H, d]`, caches `[num_blocks, block_size, n_kv, d]` with this
step's K/V already written (the native backend's keys are `[num_blocks, n_kv, d, block_size]`), out
`[T, H, d]` in q's dtype. Invariant: a plan depends only on the step's metadata and the backend's
shape, never on a layer's numbers, so the model builds it once per step and hands it to every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from batchcli.engine.attention.metadata import AttnMetadata

PlanT = TypeVar("PlanT")


@dataclass(frozen=True, slots=True)
class AttnShape:
    """What a backend knows of the model before any step: its heads, their size and the dtype."""

    num_heads: int
    num_kv_heads: int
    dtype: torch.dtype
    head_dim: int

    def __post_init__(self) -> None:
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads


class AttentionBackend(Protocol[PlanT]):
    def plan(self, meta: AttnMetadata) -> PlanT:
        """Everything per step the layers share; built once per step."""
        ...

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: PlanT,
            scale: float) -> torch.Tensor:
        """One layer's attention: q [T, H, d] -> [T, H, d] in q's dtype."""
        ...
