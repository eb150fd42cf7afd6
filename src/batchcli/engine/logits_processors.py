"""Logits processing before sampling, vectorised over one step's sampled rows.

Per row, in this order: + logit_bias (OpenAI: added to the model's logits); EOS and `stop_token_ids`
set to -inf while fewer than `min_tokens` tokens are generated; repetition penalty (transformers'
definition: a logit of a token in prompt or output is divided by the penalty if positive, multiplied
if negative); presence and frequency penalties (OpenAI's: logit - frequency * count - presence * [count > 0],
counts over the generated tokens); then the grammar mask (constraints.py) and division by temperature
(greedy rows keep temperature 1).

Invariant (batch invariance): every operation is element-wise within a row, so a row's processed logits
are bit-identical whichever other rows share the step. No Python loop runs over the vocabulary: the
per-row token lists become one flat index tensor each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from batchcli.params import SamplingParams


@dataclass(frozen=True, slots=True)
class Row:
    """One sampled row: its parameters, the tokens it generated so far, and its prompt's tokens."""

    params: SamplingParams
    generated: list[int]
    prompt: np.ndarray  # [P] int


def _flat(lists: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices and values of ragged per-row token lists, as two flat int64 tensors."""
    lengths = [len(x) for x in lists]
    rows = np.repeat(np.arange(len(lists)), lengths)  # [total]
    values = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if lists else np.zeros(0, np.int64)
    return torch.from_numpy(rows).to(device), torch.from_numpy(values).to(device)


def add_logit_bias_(logits: torch.Tensor, rows: list[Row]) -> None:
    picked = [i for i, r in enumerate(rows) if r.params.logit_bias]
    if not picked:
        return
    pairs = [r.params.logit_bias for r in (rows[i] for i in picked)]
    row_idx, tokens = _flat([[t for t, _ in p] for p in pairs], logits.device)
    biases = torch.tensor([b for p in pairs for _, b in p], dtype=logits.dtype, device=logits.device)  # [total]
    at = torch.tensor(picked, device=logits.device)[row_idx]
    logits.index_put_((at, tokens), biases, accumulate=True)


def mask_early_stops_(logits: torch.Tensor, rows: list[Row], eos_ids: tuple[int, ...]) -> None:
    """EOS and stop tokens cannot be sampled before min_tokens tokens."""
    picked = [i for i, r in enumerate(rows) if len(r.generated) < r.params.min_tokens]
    if not picked:
        return
    banned = [list(eos_ids) + list(rows[i].params.stop_token_ids) for i in picked]
    row_idx, tokens = _flat(banned, logits.device)
    at = torch.tensor(picked, device=logits.device)[row_idx]
    logits[at, tokens] = float("-inf")


def apply_penalties_(logits: torch.Tensor, rows: list[Row]) -> None:
    picked = [i for i, r in enumerate(rows) if r.params.penalised]
    if not picked:
        return
    device, vocab = logits.device, logits.shape[1]
    chosen = [rows[i] for i in picked]
    at = torch.tensor(picked, device=device)  # [R]
    counts = torch.zeros(len(picked), vocab, dtype=logits.dtype, device=device)  # [R, V]
    gen_rows, gen_tokens = _flat([r.generated for r in chosen], device)
    counts.index_put_((gen_rows, gen_tokens), torch.ones_like(gen_tokens, dtype=logits.dtype), accumulate=True)
    sub = logits[at]  # [R, V]
    rep = torch.tensor([r.params.repetition_penalty for r in chosen], dtype=logits.dtype, device=device)[:, None]
    if bool((rep != 1.0).any()):
        seen = counts > 0  # [R, V]
        prompt_rows, prompt_tokens = _flat([r.prompt for r in chosen], device)
        seen[prompt_rows, prompt_tokens] = True
        sub = torch.where(seen, torch.where(sub < 0, sub * rep, sub / rep), sub)
    freq = torch.tensor([r.params.frequency_penalty for r in chosen], dtype=logits.dtype, device=device)[:, None]
    pres = torch.tensor([r.params.presence_penalty for r in chosen], dtype=logits.dtype, device=device)[:, None]
    logits[at] = sub - freq * counts - pres * (counts > 0).to(logits.dtype)


def scale_by_temperature(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """logits / temperature per row; greedy rows (temperature 0, or one so small it underflows: see
    SamplingParams.greedy) are returned as they are."""
    temps = [1.0 if r.params.greedy else r.params.temperature for r in rows]
    if all(t == 1.0 for t in temps):
        return logits
    return logits / torch.tensor(temps, dtype=logits.dtype, device=logits.device)[:, None]  # [N, V]


def process_(logits: torch.Tensor, rows: list[Row], eos_ids: tuple[int, ...]) -> None:
    """Bias, min_tokens masking and penalties, in place on `logits` [N, V] (float32)."""
    add_logit_bias_(logits, rows)
    mask_early_stops_(logits, rows, eos_ids)
    apply_penalties_(logits, rows)
