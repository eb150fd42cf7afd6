"""One engine worker with all the CPU threads vs N workers sharing them, on the harness's paper workload.

    python -m benchmarks.ray_bench                 # full size (run it on an idle machine)
    python -m benchmarks.ray_bench --quick         # the harness's --quick size
    python -m benchmarks.ray_bench --shape 2,64,4,16,4 --workers 2   # a smoke run

Each configuration is one `batchllm run --workers K` subprocess on a local Ray cluster (K = 1, then
--workers), every worker given cpu_count / K threads; also the plain one-process run for reference.
Reported: the whole process (start-up, Ray, model loads included) and the generation time (--metrics
run_s: the driver's loop, from the first shard handed out to the last result). On one machine more
workers are not expected to win: the numbers show what the Ray path costs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import orjson

from benchmarks import synth
from benchmarks.workloads import benches


def _run(src: Path, out: Path, model: str | None, workers: int | None) -> dict:
    metrics = out.with_suffix(".metrics.json")
    cmd = [sys.executable, "-m", "batchcli.cli", "run", str(src), "-o", str(out), "--overwrite", "--quiet",
           "--metrics", str(metrics), "--ignore-eos"] + (["--model", model] if model else [])
    if workers is not None:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    m = orjson.loads(metrics.read_bytes())
    return {"workers": workers, "threads_each": (os.cpu_count() or 1) // (workers or 1),
            "process_s": round(time.perf_counter() - started, 2), "generation_s": round(m["run_s"], 2),
            "output_tok_s": round(m["completion_tokens"] / max(m["run_s"], 1e-9), 1),
            "prefill_tokens_computed": m["prefill_tokens_computed"], "skew_measured": m.get("balance", {}).get("skew_measured")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the harness's --quick paper size")
    parser.add_argument("--shape", help="groups,prefix_len,degree,suffix_len,output_len instead of the harness's")
    parser.add_argument("--workers", type=int, default=2, help="the many-worker configuration (default 2)")
    parser.add_argument("--model", help="as batchllm run --model (default: the embedded model)")
    args = parser.parse_args(argv)
    paper = next(b for b in benches(args.quick) if b.name == "paper")
    make = partial(synth.shared_prefix, *map(int, args.shape.split(","))) if args.shape else paper.make
    work = make()
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        src = Path(tmp) / "paper.jsonl"
        synth.write_jsonl(work, src)
        rows = [_run(src, Path(tmp) / f"out-{k}.jsonl", args.model, k) for k in (None, 1, args.workers)]
    print(f"paper workload: {len(work.tokens):,} requests, {work.total_tokens:,} prompt tokens, "
          f"{int(work.max_tokens.sum()):,} output tokens; {os.cpu_count()} CPUs")
    for r in rows:
        label = "one process, no Ray" if r["workers"] is None else f"{r['workers']} worker(s) x {r['threads_each']} threads"
        print(f"  {label:<28} process {r['process_s']:>8.2f} s   generation {r['generation_s']:>8.2f} s   "
              f"{r['output_tok_s']:>8.1f} output tok/s")
    print(orjson.dumps(rows).decode())


if __name__ == "__main__":
    main()
