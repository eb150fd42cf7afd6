"""Compact token storage for many prompts: one flat int32 array plus offsets.

Invariant: prompt i is `flat[offsets[i]:offsets[i + 1]]`; offsets is int64, non-decreasing, starts at 0.
10^5 prompts x 2k tokens is 800 MB here, where a list of Python ints would be ~15x that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class TokenArrays:
    flat: np.ndarray  # int32 [total_tokens]
    offsets: np.ndarray  # int64 [num_prompts + 1]

    def __post_init__(self) -> None:
        if self.flat.dtype != np.int32 or self.offsets.dtype != np.int64:
            raise ValueError(f"TokenArrays wants int32 flat and int64 offsets, got {self.flat.dtype}, {self.offsets.dtype}")
        if self.offsets.ndim != 1 or len(self.offsets) == 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.flat):
            raise ValueError("TokenArrays offsets must start at 0 and end at len(flat)")

    @classmethod
    def from_lists(cls, prompts: list[list[int]] | list[np.ndarray]) -> TokenArrays:
        lengths = np.fromiter((len(p) for p in prompts), dtype=np.int64, count=len(prompts))
        offsets = np.zeros(len(prompts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts]) if prompts else np.zeros(0, np.int32)
        return cls(flat.astype(np.int32, copy=False), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def per_prompt(values: object, name: str, prompts: int) -> np.ndarray:
    """`values` as int64 [prompts], each >= 1 (a count per prompt: max_tokens, n); ValueError otherwise."""
    out = np.asarray(values, dtype=np.int64)
    if out.shape != (prompts,):
        raise ValueError(f"{name} must have one entry per prompt ({prompts}), got shape {out.shape}")
    if prompts and out.min() < 1:
        raise ValueError(f"{name} must be >= 1 for every request, got {int(out.min())}")
    return out
