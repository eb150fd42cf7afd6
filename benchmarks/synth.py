"""Deterministic synthetic workloads, written as `prompt_token_ids` JSONL for benchmarks.

Invariant: a workload is a pure function of its arguments (seed included): the same call gives the
same prompts in the same shuffled order on every machine. Sharing is exact by construction: every
shared part starts with a tag token unique among its siblings, so two prompts share exactly the
parts they were built from (for block sizes that divide the part lengths, the last part not empty),
whatever the random fill.

    python -m benchmarks.synth paper /tmp/paper.jsonl
    python -m benchmarks.synth shared_prefix /tmp/x.jsonl --set groups=100 --set degree=8
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from batchcli.planning.token_arrays import TokenArrays

VOCAB = 49152  # SmolLM2's vocabulary, the default model's
LOW = 256  # ids below this are left alone (special and byte tokens)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    tokens: TokenArrays  # prompts in file order
    max_tokens: np.ndarray  # int64 [R]
    shared_tokens: int  # prompt tokens a perfect prefix sharer computes (each shared part once)

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.offsets[-1])


def _fill(rng: np.random.Generator, siblings: int, length: int, copies: int = 1) -> np.ndarray:
    """`copies` x `siblings` random parts of `length` tokens; row c * siblings + j starts with tag j,
    so the first token tells the siblings of one parent apart."""
    if siblings > VOCAB - LOW:
        raise ValueError(f"at most {VOCAB - LOW} sibling parts can carry a distinct tag, got {siblings}")
    part = rng.integers(LOW, VOCAB, size=(copies * siblings, length), dtype=np.int32)  # [copies * siblings, length]
    if length:
        part[:, 0] = np.tile(LOW + rng.permutation(VOCAB - LOW)[:siblings], copies)
    return part


def _assemble(name: str, parts: list[np.ndarray], index: np.ndarray, output_len: int, shared: int, seed: int, shuffle: bool) -> Workload:
    """Prompt r = concat of parts[level][index[r, level]]; rows of `index` are shuffled into file order."""
    rng = np.random.default_rng(seed + 1)
    if shuffle:
        index = index[rng.permutation(len(index))]
    lengths = sum(parts[level].shape[1] for level in range(len(parts)))
    flat = np.concatenate([parts[level][index[:, level]] for level in range(len(parts))], axis=1)  # [R, lengths]
    offsets = np.arange(len(index) + 1, dtype=np.int64) * lengths
    tokens = TokenArrays(np.ascontiguousarray(flat).reshape(-1), offsets)
    return Workload(name, tokens, np.full(len(index), output_len, np.int64), shared)


def shared_prefix(groups: int = 64, prefix_len: int = 1024, degree: int = 16, suffix_len: int = 128,
                  output_len: int = 128, seed: int = 0, shuffle: bool = True) -> Workload:
    """`groups` distinct prefixes, each followed by `degree` distinct suffixes."""
    rng = np.random.default_rng(seed)
    prefixes = _fill(rng, groups, prefix_len)  # [groups, prefix_len]
    suffixes = _fill(rng, degree, suffix_len, copies=groups)  # [groups * degree, suffix_len]
    index = np.stack([np.repeat(np.arange(groups), degree), np.arange(groups * degree)], -1)  # [R, 2]
    shared = groups * prefix_len + groups * degree * suffix_len
    return _assemble("shared_prefix", [prefixes, suffixes], index, output_len, shared, seed, shuffle)


def paper(seed: int = 0, output_len: int = 128) -> Workload:
    """The BatchLLM paper's shape: 1,250 contexts of 2,000 tokens x 16 questions of 200 tokens."""
    w = shared_prefix(groups=1250, prefix_len=2000, degree=16, suffix_len=200, output_len=output_len, seed=seed)
    return Workload("paper", w.tokens, w.max_tokens, w.shared_tokens)


def multi_level(system_len: int = 512, docs: int = 32, doc_len: int = 1024, questions: int = 16,
                question_len: int = 64, output_len: int = 128, seed: int = 0, shuffle: bool = True) -> Workload:
    """One system prompt -> `docs` documents -> `questions` questions each: a three-level tree."""
    rng = np.random.default_rng(seed)
    system = _fill(rng, 1, system_len)  # [1, system_len]
    documents = _fill(rng, docs, doc_len)  # [docs, doc_len]
    asks = _fill(rng, questions, question_len, copies=docs)  # [docs * questions, question_len]
    count = docs * questions
    index = np.stack([np.zeros(count, np.int64), np.repeat(np.arange(docs), questions), np.arange(count)], -1)  # [R, 3]
    shared = system_len + docs * doc_len + docs * questions * question_len
    return _assemble("multi_level", [system, documents, asks], index, output_len, shared, seed, shuffle)


def no_sharing(count: int = 1024, length: int = 512, output_len: int = 128, seed: int = 0) -> Workload:
    """`count` prompts that share nothing (distinct first tokens)."""
    prompts = _fill(np.random.default_rng(seed), count, length)  # [count, length]
    index = np.arange(count)[:, None]  # [R, 1]
    return _assemble("no_sharing", [prompts], index, output_len, count * length, seed, shuffle=False)


WORKLOADS = {"paper": paper, "shared_prefix": shared_prefix, "multi_level": multi_level, "no_sharing": no_sharing}


def write_jsonl(workload: Workload, path: str | Path) -> None:
    """One `{"id", "prompt_token_ids", "max_tokens"}` line per prompt, ids `r<file position>`."""
    with open(path, "wb") as f:
        for i in range(len(workload.tokens)):
            line = {"id": f"r{i}", "prompt_token_ids": workload.tokens[i], "max_tokens": int(workload.max_tokens[i])}
            f.write(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synth", description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=INT", help="override a workload argument")
    args = parser.parse_args(argv)
    fn = WORKLOADS[args.workload]
    known = inspect.signature(fn).parameters
    overrides: dict[str, int] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in known or not value.lstrip("-").isdigit():
            parser.error(f"--set {item!r}: expected NAME=INT with NAME one of {sorted(known)}")
        overrides[name] = int(value)
    workload = fn(**overrides)
    write_jsonl(workload, args.out)
    print(f"{workload.name}: {len(workload.tokens)} prompts, {workload.total_tokens} tokens -> {args.out}")


if __name__ == "__main__":
    main()
