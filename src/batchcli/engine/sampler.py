"""Next-token sampling from processed logits: greedy, or min-p, top-k, top-p cuts and a draw from a
private RNG per sequence.

Invariant (batch invariance): a sequence's sampled tokens depend only on its own logits, parameters
and seed, never on which other sequences share the step — every random row draws from its own
generator, seeded from (request seed, sample index). A row whose logits are not finite (NaN, +inf, or
nothing allowed) gets no token; the engine turns that sequence into an error line, the others go on.
"""

from __future__ import annotations

import secrets

import torch

from batchcli.params import SamplingParams

_SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, sample) pairs over the 64-bit seed space


def seed_for(seed: int | None, sample_index: int, fallback: int) -> int:
    """The generator seed of one sample; unseeded requests draw from the run's own random seed."""
    base = fallback if seed is None else seed
    return (base * _SEED_MIX + sample_index) % (1 << 63)


class Sampler:
    def __init__(self, run_seed: int | None = None) -> None:
        # from the OS, not torch.seed(): that would reseed torch's global generator under the caller
        self._run_seed = secrets.randbits(63) if run_seed is None else run_seed
        self._generators: dict[int, torch.Generator] = {}
        self._restored: dict[int, bytes] = {}  # checkpointed RNG states not applied yet

    def sample(self, scaled: torch.Tensor, params: list[SamplingParams], seq_ids: list[int],
               sample_indices: list[int]) -> list[int | None]:
        """One token per row of `scaled` [N, vocab] (float32 logits already divided by temperature);
        row i belongs to seq_ids[i]; None where the row's distribution is not finite."""
        # one pass gives the greedy token and, as max propagates NaN, whether the row is usable at all
        top, argmax = scaled.max(dim=-1)  # [N], [N]
        usable = torch.isfinite(top).tolist()
        tokens: list[int | None] = argmax.tolist()  # greedy for every row, overwritten below
        for i, p in enumerate(params):
            if not usable[i]:
                tokens[i] = None
            elif not p.greedy:
                tokens[i] = self._draw(scaled[i], p, seq_ids[i], sample_indices[i])
        return tokens

    def release(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    def state(self, seq_id: int) -> bytes | None:
        """The RNG state of a sequence's generator (None before its first random draw), for checkpoints."""
        gen = self._generators.get(seq_id)
        return self._restored.get(seq_id) if gen is None else bytes(gen.get_state().numpy())

    def restore(self, seq_id: int, state: bytes) -> None:
        """Continue a sequence from a checkpointed RNG state (applied at its next random draw, on the
        logits' device)."""
        self._restored[seq_id] = state

    def _draw(self, row: torch.Tensor, p: SamplingParams, seq_id: int, sample_index: int) -> int:
        gen = self._generators.get(seq_id)
        if gen is None:
            gen = torch.Generator(device=row.device)
            if seq_id in self._restored:
                gen.set_state(torch.frombuffer(bytearray(self._restored.pop(seq_id)), dtype=torch.uint8))
            else:
                gen.manual_seed(seed_for(p.seed, sample_index, self._run_seed + seq_id))
            self._generators[seq_id] = gen
        scaled = row  # [V]
        if p.min_p > 0:
            probs = scaled.softmax(dim=-1)
            scaled = scaled.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
        if p.top_k and p.top_k < scaled.shape[0]:
            kth = torch.topk(scaled, p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = scaled.sort(descending=True)  # [V]
            probs = sorted_logits.softmax(dim=-1)
            # drop a token when the mass before it already reaches top_p; the top token always stays
            drop = (probs.cumsum(dim=-1) - probs) >= p.top_p
            scaled = scaled.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = scaled.softmax(dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen).item())
