"""Throughput of pooled jobs: an embedding corpus under one shared instruction, and a rerank job.

    python -m benchmarks.pooling_bench [--quick] [--model DIR] [--dtype auto|float32|bfloat16] [--out DIR]

Embeddings: `inputs` prompt-token inputs, each a shared instruction of `instruction` tokens and a
distinct text of 16-48 tokens, as plain `{"id", "input"}` lines of 64 inputs each; run by batchllm
(prefix sharing on), by batchllm `--sharing off`, and by transformers (`AutoModel` forward over padded
batches of 32 in file order + the same last-token pooling, normalised) on the first `--hf-inputs` of
them (its rate per token does not depend on how many batches it runs; the whole corpus would take it
many minutes on a small CPU). Rerank: `queries` /v1/rerank
lines of `documents` documents of about `doc_words` words each, by batchllm with and without sharing.
Each batchllm run is one fresh CLI process (`python -m batchcli.cli run`, the code on PYTHONPATH);
rates are prompt tokens over the generation time (wall - model and tokenizer load, from --metrics), and
over the process's whole wall time. Transformers' rate is over its forward loop (model load left out).
Invariant: every engine reads the same inputs, and the script checks that batchllm's embeddings and
transformers' agree (cosine) before it reports a rate, so a fast wrong answer is never reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks.machine import cpu_model
from benchmarks.synth import LOW, VOCAB

HERE = Path(__file__).resolve().parent
_WORDS = ("the cat dog house river mountain city light water energy system market policy science music history "
          "garden window teacher student doctor engine planet ocean forest winter summer morning evening bread "
          "coffee paper letter travel money market school village road bridge island story").split()


def embed_corpus(inputs: int, instruction: int, seed: int = 0) -> list[list[int]]:
    """Prompt token lists: one instruction, then a distinct text of 16-48 tokens each."""
    rng = np.random.default_rng(seed)
    head = rng.integers(LOW, VOCAB, instruction).tolist()
    return [head + rng.integers(LOW, VOCAB, int(rng.integers(16, 49))).tolist() for _ in range(inputs)]


def rerank_lines(queries: int, documents: int, doc_words: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(rng.choice(_WORDS, n))  # noqa: E731
    return [{"custom_id": f"q{q}", "method": "POST", "url": "/v1/rerank",
             "body": {"query": text(12) + "?", "documents": [text(doc_words) for _ in range(documents)]}}
            for q in range(queries)]


def write(path: Path, lines: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))


def run_batchllm(src: Path, out_dir: Path, tag: str, model: Path, dtype: str, flags: tuple[str, ...]) -> dict:
    out, metrics = out_dir / f"{tag}.jsonl", out_dir / f"{tag}.metrics.json"
    argv = [sys.executable, "-m", "batchcli.cli", "run", str(src), "-o", str(out), "--overwrite", "--quiet",
            "--metrics", str(metrics), "--model", str(model), "--dtype", dtype, *flags]
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{tag}: exit {done.returncode}: {done.stderr[-800:]}")
    m = json.loads(metrics.read_text())
    gen = m["wall_s"] - m["model_load_s"] - m["tokenizer_load_s"]  # start-up left out, as the harness does
    return {"tag": tag, "flags": list(flags), "wall_s": wall, "gen_s": gen, "prompt_tokens": m["prompt_tokens"],
            "prefill_tokens_computed": m["prefill_tokens_computed"], "saving_ratio": m["saving_ratio"],
            "tok_per_s": m["prompt_tokens"] / gen, "tok_per_s_wall": m["prompt_tokens"] / wall, "out": str(out)}


def hf_embed(model_dir: Path, prompts: list[list[int]], dtype: str, batch_size: int = 32) -> tuple[dict, np.ndarray]:
    """transformers: padded batches in file order, last-token pooling at each row's own end, normalised."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    vectors = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.zeros((len(batch), width), dtype=torch.long)  # [B, width], right-padded
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, width]
            for row, p in enumerate(batch):
                ids[row, : len(p)], mask[row, : len(p)] = torch.tensor(p), 1
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, width, D]
            last = hidden[torch.arange(len(batch)), mask.sum(1) - 1]  # [B, D]
            vectors.append(F.normalize(last.float(), dim=-1).numpy())
    gen = time.perf_counter() - t0
    tokens = sum(map(len, prompts))
    return {"tag": "transformers", "gen_s": gen, "prompt_tokens": tokens, "tok_per_s": tokens / gen,
            "batch_size": batch_size}, np.concatenate(vectors)


EMBED_LINE = 64  # inputs per embeddings line


def read_embeddings(path: Path, count: int) -> np.ndarray:
    """batchllm's vectors from its output, in corpus order."""
    rows = {}
    for raw in path.read_bytes().splitlines():
        line = orjson.loads(raw)
        for k, v in enumerate(line["embeddings"]):
            rows[int(line["id"][1:]) * EMBED_LINE + k] = v
    return np.array([rows[i] for i in range(count)], np.float32)


def resolved_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    from batchcli.engine.devices import pick_device, pick_dtype

    return str(pick_dtype("auto", pick_device("cpu"))).removeprefix("torch.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pooling_bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for a smoke test")
    p.add_argument("--model", type=Path, help="HF model directory (default: the project's SmolLM2-135M)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--out", type=Path, default=HERE / ".work" / "pooling")
    p.add_argument("--hf-inputs", type=int, default=512, help="corpus inputs transformers embeds (a prefix)")
    args = p.parse_args(argv)
    from benchmarks.__main__ import default_model

    model = (args.model or default_model()).resolve()
    dtype = resolved_dtype(args.dtype)
    inputs, instruction, queries, documents, doc_words = (128, 64, 2, 8, 40) if args.quick else (2048, 64, 32, 50, 190)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = embed_corpus(inputs, instruction)
    embed_src = args.out / "embed.jsonl"
    write(embed_src, [{"id": f"e{j}", "input": corpus[j * EMBED_LINE : (j + 1) * EMBED_LINE]}
                      for j in range(-(-inputs // EMBED_LINE))])
    rerank_src = args.out / "rerank.jsonl"
    write(rerank_src, rerank_lines(queries, documents, doc_words))
    runs = {"embed": [], "rerank": []}
    for tag, flags in (("sharing", ()), ("sharing-off", ("--sharing", "off"))):
        runs["embed"].append(run_batchllm(embed_src, args.out, f"embed-{tag}", model, dtype, flags))
        print(json.dumps(runs["embed"][-1]), file=sys.stderr, flush=True)
    hf, hf_vectors = hf_embed(model, corpus[: args.hf_inputs], dtype)
    ours = read_embeddings(Path(runs["embed"][0]["out"]), inputs)[: args.hf_inputs]
    cosine = np.sum(ours * hf_vectors, axis=1)  # both normalised
    hf["min_cosine_vs_batchllm"] = float(cosine.min())
    if hf["min_cosine_vs_batchllm"] < (0.999 if dtype == "float32" else 0.98):
        raise RuntimeError(f"batchllm's and transformers' embeddings disagree: min cosine {cosine.min():.5f}")
    runs["embed"].append(hf)
    print(json.dumps(hf), file=sys.stderr, flush=True)
    for tag, flags in (("sharing", ()), ("sharing-off", ("--sharing", "off"))):
        runs["rerank"].append(run_batchllm(rerank_src, args.out, f"rerank-{tag}", model, dtype, flags))
        print(json.dumps(runs["rerank"][-1]), file=sys.stderr, flush=True)
    report = {"command": " ".join(["python -m benchmarks.pooling_bench", *(argv if argv is not None else sys.argv[1:])]),
              "cpu": cpu_model(), "threads": os.cpu_count(), "model": str(model), "dtype": dtype,
              "sizes": {"inputs": inputs, "instruction": instruction, "queries": queries, "documents": documents,
                        "doc_words": doc_words}, "runs": runs}
    e, r = runs["embed"], runs["rerank"]
    report["ratios"] = {"embed_vs_sharing_off": e[0]["tok_per_s"] / e[1]["tok_per_s"],
                        "embed_vs_transformers": e[0]["tok_per_s"] / e[2]["tok_per_s"],
                        "rerank_vs_sharing_off": r[0]["tok_per_s"] / r[1]["tok_per_s"]}
    (args.out / "pooling_results.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
