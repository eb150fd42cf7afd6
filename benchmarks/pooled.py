"""The pooled-job workloads (issue 20): an embedding corpus under one shared instruction, and a rerank job.

Embeddings: `inputs` prompt-token inputs, each one instruction of `instruction` tokens and a distinct
text of 16-48 tokens, as plain `{"id", "input"}` lines of EMBED_LINE inputs each. Rerank: `queries`
/v1/rerank lines of `documents` documents of `doc_words` words each (every document's judgement prompt
starts with its query's). batchllm runs each with prefix sharing and with `--sharing off`;
transformers embeds the first `hf_inputs` of the corpus (its rate per token does not depend on how
many batches it runs). Readers turn each engine's output back into vectors or scores, so the report
can check that the engines agree before it puts their rates side by side.
Invariant: a workload is built from fixed seeds: every engine and every pass reads identical lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks.synth import LOW, VOCAB

EMBED_LINE = 64  # inputs per embeddings line
SHARING_OFF = ("sharing-off", ("--sharing", "off"))  # batchllm's run without prefix sharing, a variant
_WORDS = ("the cat dog house river mountain city light water energy system market policy science music history "
          "garden window teacher student doctor engine planet ocean forest winter summer morning evening bread "
          "coffee paper letter travel money market school village road bridge island story").split()


def embed_corpus(inputs: int, instruction: int, seed: int = 0) -> list[list[int]]:
    """Prompt token lists: one instruction, then a distinct text of 16-48 tokens each."""
    rng = np.random.default_rng(seed)
    head = rng.integers(LOW, VOCAB, instruction).tolist()
    return [head + rng.integers(LOW, VOCAB, int(rng.integers(16, 49))).tolist() for _ in range(inputs)]


def embed_lines(corpus: list[list[int]]) -> list[dict]:
    return [{"id": f"e{j}", "input": corpus[j * EMBED_LINE : (j + 1) * EMBED_LINE]}
            for j in range(-(-len(corpus) // EMBED_LINE))]


def rerank_lines(queries: int, documents: int, doc_words: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(rng.choice(_WORDS, n))  # noqa: E731
    return [{"custom_id": f"q{q}", "method": "POST", "url": "/v1/rerank",
             "body": {"query": text(12) + "?", "documents": [text(doc_words) for _ in range(documents)]}}
            for q in range(queries)]


@dataclass(frozen=True, slots=True)
class PooledBench:
    name: str
    title: str
    lines: Callable[[], list[dict]]
    hf_inputs: int = 0  # corpus inputs transformers embeds; 0: no transformers run

    @property
    def reference(self) -> str | None:
        """The engine batchllm's outputs must agree with before any batchllm rate on this workload is shown."""
        return "transformers-embed" if self.hf_inputs else None

    @property
    def peers(self) -> tuple[str, ...]:
        return ("batchllm", self.reference) if self.reference else ("batchllm",)


@dataclass(frozen=True, slots=True)
class PooledBuilt:
    """A pooled workload written to disk; shaped like workloads.Built where the runner reads it."""

    bench: PooledBench
    path: Path
    lines: int
    max_tokens: int = 1  # no generation: the CLI's default is never used
    kv_budget_tokens: None = None
    max_prompt: int = 0


def pooled_benches(quick: bool) -> list[PooledBench]:
    inputs, instruction, hf_inputs = (128, 64, 64) if quick else (2048, 64, 512)
    queries, documents, doc_words = (2, 8, 40) if quick else (32, 50, 190)
    return [
        PooledBench("embeddings", f"{inputs} embedding inputs (plain lines of {EMBED_LINE}): one instruction of "
                    f"{instruction} tokens + a distinct text of 16-48 tokens each; transformers embeds the first "
                    f"{hf_inputs}", lambda: embed_lines(embed_corpus(inputs, instruction)), hf_inputs),
        PooledBench("rerank", f"{queries} /v1/rerank lines x {documents} documents of {doc_words} words (~1.3 tokens "
                    "a word)", lambda: rerank_lines(queries, documents, doc_words)),
    ]


def build_pooled(bench: PooledBench, folder: Path) -> PooledBuilt:
    folder.mkdir(parents=True, exist_ok=True)
    lines = bench.lines()
    path = folder / f"{bench.name}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return PooledBuilt(bench, path, len(lines))


def corpus_prompts(path: Path, count: int) -> list[list[int]]:
    """The first `count` inputs of an embeddings workload file, in corpus order."""
    prompts: list[list[int]] = []
    for raw in path.read_bytes().splitlines():
        prompts += orjson.loads(raw)["input"]
        if len(prompts) >= count:
            break
    return prompts[:count]


def read_vectors(path: str) -> np.ndarray:
    """An engine's embeddings in corpus order: batchllm's output lines, or transformers' .npy file."""
    if path.endswith(".npy"):
        return np.load(path)
    rows = {}
    for raw in Path(path).read_bytes().splitlines():
        line = orjson.loads(raw)
        for k, v in enumerate(line["embeddings"]):
            rows[int(line["id"][1:]) * EMBED_LINE + k] = v
    return np.array([rows[i] for i in range(len(rows))], np.float32)


def read_scores(path: str) -> dict[tuple[str, int], float]:
    """A rerank output's relevance scores by (custom_id, document index)."""
    scores = {}
    for raw in Path(path).read_bytes().splitlines():
        line = orjson.loads(raw)
        for r in line["response"]["body"]["results"]:
            scores[(line["custom_id"], r["index"])] = r["relevance_score"]
    return scores


def agreement(workload: str, mine: str, ref: str) -> float:
    """Embeddings: the smallest cosine between an engine's vectors and batchllm's (over the inputs both
    have); rerank: the largest |score difference|."""
    if workload == "embeddings":
        a, b = read_vectors(mine), read_vectors(ref)
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return float(cos.min())
    a, b = read_scores(mine), read_scores(ref)
    return max(abs(a[k] - b[k]) for k in b)


def agrees(workload: str, value: float, dtype: str) -> bool:
    """Whether two engines' outputs are the same answer within the dtype's rounding. A bf16 yes/no
    logit carries ~1% error, which moves a relevance near 0.5 by up to ~0.05 (measured 0.049 between
    sharing on and off): the bf16 bound is twice that; a wrong answer moves scores far more."""
    if workload == "embeddings":
        return value >= (0.999 if dtype == "float32" else 0.98)
    return value <= (1e-3 if dtype == "float32" else 0.1)
