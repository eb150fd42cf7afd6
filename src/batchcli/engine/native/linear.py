"""Linear layers of the fused CPU path, with bfloat16 weights packed once into oneDNN's layout.

`F.linear` on a bfloat16 CPU tensor hands oneDNN the row-major weight, which it re-lays for its
kernel on every call; at the few rows of a decode step that is most of the call (measured on
SmolLM2's projections: 16 rows 1.4-1.9x faster packed, the LM head 1.9x; 4,096 rows about equal).
The packed weights replace the row-major ones (no second copy is kept). float32 weights stay
row-major on torch's own matmul, which keeps float32 output token-identical to transformers.
Invariant: `project(x, w, b)` equals `F.linear(x, w, b)` whether or not `w` was packed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the model module imports this one
    from batchcli.engine.model import LayerWeights, ModelWeights


def can_pack(dtype: torch.dtype) -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (dtype == torch.bfloat16 and torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def pack_weights(weights: ModelWeights) -> ModelWeights:
    """The same weights with every projection (and the LM head) packed; norms and the embedding as they are."""
    if not can_pack(weights.embed.dtype):
        return weights

    def layer(lw: LayerWeights) -> LayerWeights:
        return dataclasses.replace(lw, qkv=_pack(lw.qkv), o_proj=_pack(lw.o_proj), gate_up=_pack(lw.gate_up),
                                   down=_pack(lw.down))

    return dataclasses.replace(weights, layers=tuple(layer(lw) for lw in weights.layers), lm_head=_pack(weights.lm_head))


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [T, in] @ weight.T + bias -> [T, out], for a packed or a row-major weight."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
