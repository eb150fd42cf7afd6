"""The named end-to-end benchmark workloads, built from benchmarks.synth, at full or --quick size.

A `Bench` names a workload, says which engines run it and whether its KV budget is constrained;
the tokens come from synth's deterministic generators (plus `decode_heavy`, which synth lacks).
Invariant: a Bench builds the same tokens in the same shuffled order on every call, so every engine
and every repeat reads identical `prompt_token_ids`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from batchcli.planning.token_arrays import TokenArrays
from benchmarks import synth
from benchmarks.flops import attention_pairs

# batchllm-eager (`--compile off`) runs wherever batchllm does: the fused path must never lose to it
BATCHLLM_AB = ("batchllm", "batchllm-eager")
ALL_PEERS = (*BATCHLLM_AB, "vllm", "transformers")
# the engines a --peers list may name: the generation engines, and transformers' embeddings (pooled workloads)
PEER_CHOICES = (*ALL_PEERS, "transformers-embed")
FAST_PEERS = (*BATCHLLM_AB, "vllm")
SWEEP_DEGREES = (1, 4, 16, 64)


@dataclass(frozen=True, slots=True)
class Bench:
    name: str
    title: str
    make: Callable[[], synth.Workload]
    peers: tuple[str, ...] = FAST_PEERS
    kv_fraction: float | None = None  # KV budget as a fraction of the working set; None = unconstrained

    def __post_init__(self) -> None:
        if self.kv_fraction is not None and not 0 < self.kv_fraction < 1:
            raise ValueError(f"bench {self.name}: kv_fraction must be in (0, 1), got {self.kv_fraction}")


@dataclass(frozen=True, slots=True)
class Built:
    """A bench's workload written to disk, with the sizes the harness needs."""

    bench: Bench
    path: Path
    requests: int
    prompt_tokens: int
    shared_tokens: int  # prompt tokens a perfect prefix sharer computes
    output_tokens: int
    max_prompt: int
    max_tokens: int
    attention_pairs: int = 0  # useful (query, key) pairs, each shared prefix once (benchmarks.flops)

    @property
    def working_set_tokens(self) -> int:
        """KV tokens to hold the whole workload at once, each shared prefix once."""
        return self.shared_tokens + self.output_tokens

    @property
    def kv_budget_tokens(self) -> int | None:
        if self.bench.kv_fraction is None:
            return None
        one_request = self.max_prompt + self.max_tokens
        return max(int(self.working_set_tokens * self.bench.kv_fraction), 2 * one_request)


def build(bench: Bench, folder: Path) -> Built:
    work = bench.make()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bench.name}.jsonl"
    synth.write_jsonl(work, path)
    return Built(
        bench=bench, path=path, requests=len(work.tokens), prompt_tokens=work.total_tokens,
        shared_tokens=work.shared_tokens, output_tokens=int(work.max_tokens.sum()),
        max_prompt=int(work.tokens.lengths.max()), max_tokens=int(work.max_tokens.max()),
        attention_pairs=attention_pairs([work.tokens[i] for i in range(len(work.tokens))], work.max_tokens.tolist()),
    )


def decode_heavy(groups: int, prefix_len: int, degree: int, suffix_len: int, outputs: tuple[int, ...],
                 seed: int = 0) -> synth.Workload:
    """shared_prefix groups whose output length cycles through `outputs` (group g gets outputs[g % k])."""
    base = synth.shared_prefix(groups, prefix_len, degree, suffix_len, output_len=1, seed=seed, shuffle=False)
    rows = groups * degree
    length = prefix_len + suffix_len
    per_group = np.array([outputs[g % len(outputs)] for g in range(groups)], np.int64)  # [groups]
    max_tokens = np.repeat(per_group, degree)  # [rows], unshuffled rows are group-major
    order = np.random.default_rng(seed + 2).permutation(rows)  # [rows]
    flat = base.tokens.flat.reshape(rows, length)[order].reshape(-1)  # [rows * length]
    tokens = TokenArrays(np.ascontiguousarray(flat), base.tokens.offsets)
    return synth.Workload("decode_heavy", tokens, max_tokens[order], base.shared_tokens)


def sweep(requests: int, prefix: int, suffix: int, out: int) -> list[Bench]:
    """Same request count and prompt shape; only how many requests share each prefix changes."""
    return [
        Bench(f"sharing-{d}", f"sharing degree {d}: {requests // d} prefixes of {prefix} x {d} suffixes of {suffix}, "
              f"{out} output tokens", partial(synth.shared_prefix, requests // d, prefix, d, suffix, out))
        for d in SWEEP_DEGREES
    ]


def benches(quick: bool) -> list[Bench]:
    """The benchmark set. --quick keeps every shape but shrinks it to seconds per engine."""
    if quick:
        paper = (2, 256, 4, 32, 8)
        multi = (64, 4, 256, 4, 16, 8)
        solo = (16, 128, 16)
        heavy = (4, 64, 4, 16, (4, 32))
        kv = (2, 128, 4, 32, 8)
        sweep_shape = (64, 48, 16, 4)
    else:
        paper = (16, 1024, 16, 128, 32)
        multi = (256, 8, 1024, 8, 64, 32)
        solo = (128, 256, 64)
        heavy = (4, 256, 8, 32, (8, 256))
        kv = (4, 512, 8, 64, 32)
        sweep_shape = (64, 384, 32, 16)
    return [
        Bench("paper", "{} contexts of {} tokens x {} questions of {}, {} output tokens, shuffled".format(*paper),
              partial(synth.shared_prefix, *paper), ALL_PEERS),
        *sweep(*sweep_shape),
        Bench("multi-level", "1 system prompt of {} -> {} documents of {} -> {} questions of {}, {} output tokens"
              .format(*multi), partial(synth.multi_level, *multi)),
        Bench("no-sharing", "{} distinct prompts of {} tokens, {} output tokens".format(*solo),
              partial(synth.no_sharing, *solo), ALL_PEERS),
        Bench("decode-heavy", "{} groups: prefix {} x {} suffixes of {}; outputs alternate {} tokens per group"
              .format(*heavy[:4], " / ".join(map(str, heavy[4]))), partial(decode_heavy, *heavy)),
        Bench("kv-constrained", "{} contexts of {} x {} questions of {}, {} output tokens; KV budget = half the "
              "working set".format(*kv), partial(synth.shared_prefix, *kv),
              BATCHLLM_AB if quick else FAST_PEERS, kv_fraction=0.5),
    ]


def ablation_bench(quick: bool) -> Bench:
    """A small multi-level tree where sharing, order, admission and attention all matter."""
    shape = (64, 2, 128, 4, 16, 8) if quick else (128, 4, 512, 8, 32, 16)
    return Bench("ablation", "batchllm ablations: 1 system prompt of {} -> {} documents of {} -> {} questions of {}, "
                 "{} output tokens".format(*shape), partial(synth.multi_level, *shape), ("batchllm",))
