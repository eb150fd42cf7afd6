"""Benchmark of the front half: prefix tree + plan on the BatchLLM paper's shape, and the reader.

Workload (benchmarks.synth.paper): 1,250 contexts of 2,000 tokens x 16 questions of 200 tokens =
20,000 shuffled requests, 44 M prompt tokens. Measures, on in-memory TokenArrays, the tree + plan
time (best of --repeat) per sharing mode and its token throughput; the tree + plan peak memory
(tracemalloc, which sees numpy's buffers); then the reader's parse time of the same file as JSONL.
Checks the saving ratio is exactly 1 - (1,250 * 2,000 + 20,000 * 200) / (20,000 * 2,200).

    python -m benchmarks.plan_bench [--quick] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

from batchcli.planning.plan import PlanSettings, build_plan
from batchcli.io.reader import read_requests
from batchcli.params import SamplingParams
from batchcli.planning.token_arrays import TokenArrays
from benchmarks import synth

BLOCK_SIZE = 16


def plan_once(work: synth.Workload, sharing: str):
    n = np.ones(len(work.tokens), np.int64)
    return build_plan(work.tokens, work.max_tokens, n, PlanSettings(BLOCK_SIZE, sharing), model="bench", fingerprint="-", errors=0)


def best_time(work: synth.Workload, sharing: str, repeat: int) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds of this process, the plan): this machine is shared, so the
    CPU time is the steadier number; numpy runs these steps on one thread, so it bounds wall time."""
    walls, cpus, plan = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        plan = plan_once(work, sharing)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), plan


def traced_peak(work: synth.Workload) -> int:
    """Bytes allocated at the peak of one multi-level tree + plan, above what was live before."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    plan_once(work, "multi")
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def parse_time(work: synth.Workload) -> tuple[float, float, float]:
    """Seconds to write the JSONL; wall and CPU seconds to read it back into TokenArrays the way
    tokenize does (each request's ids to an int32 array at once, so Python ints never pile up)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "paper.jsonl"
        t0 = time.perf_counter()
        synth.write_jsonl(work, path)
        written = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        arrays = [np.asarray(r.prompt_token_ids, dtype=np.int32) for r in read_requests(str(path), SamplingParams())]
        tokens = TokenArrays.from_lists(arrays)
        parsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not np.array_equal(tokens.flat, work.tokens.flat):
        raise RuntimeError("the reader gave back other tokens than were written")
    return written, parsed, cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the contexts (125 x 16 requests)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-parse", action="store_true", help="skip writing and parsing the JSONL")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    contexts = 125 if args.quick else 1250
    t0 = time.perf_counter()
    w = synth.shared_prefix(groups=contexts, prefix_len=2000, degree=16, suffix_len=200, seed=0)
    out: dict = {"requests": len(w.tokens), "tokens": w.total_tokens, "generate_s": time.perf_counter() - t0}
    for sharing in ("multi", "single", "off"):
        wall, cpu, plan = best_time(w, sharing, args.repeat)
        out[sharing] = {"seconds": wall, "cpu_seconds": cpu, "tokens_per_s": w.total_tokens / wall,
                        "tokens_per_cpu_s": w.total_tokens / max(cpu, 1e-9), "saving_ratio": plan.stats.saving_ratio,
                        "segments": len(plan.segments), "groups": plan.stats.groups}
    want = 1 - (contexts * 2000 + contexts * 16 * 200) / (contexts * 16 * 2200)
    out["saving_ratio_exact"] = abs(out["multi"]["saving_ratio"] - want) < 1e-12
    out["plan_peak_mib"] = traced_peak(w) / 2**20
    out["max_rss_mib_before_parse"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not args.no_parse:
        out["write_jsonl_s"], out["parse_s"], out["parse_cpu_s"] = parse_time(w)
        out["parse_tokens_per_s"] = w.total_tokens / out["parse_s"]
        out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        _report(out, want)
    return out


def _report(out: dict, want: float) -> None:
    print(f"workload: {out['requests']:,} requests, {out['tokens'] / 1e6:.1f} M prompt tokens (generated in {out['generate_s']:.2f} s)")
    for sharing in ("multi", "single", "off"):
        r = out[sharing]
        print(f"tree+plan {sharing:6s}: {r['seconds']:.3f} s wall = {r['tokens_per_s'] / 1e6:6.1f} M tokens/s "
              f"({r['cpu_seconds']:.3f} s CPU = {r['tokens_per_cpu_s'] / 1e6:.1f} M tokens/CPU-s), "
              f"saving {r['saving_ratio']:.4%}, {r['segments']:,} segments, {r['groups']:,} groups")
    print(f"saving ratio exact ({want:.6f}): {out['saving_ratio_exact']}")
    print(f"tree+plan peak memory (tracemalloc): {out['plan_peak_mib']:.0f} MiB; "
          f"process max RSS before parsing: {out['max_rss_mib_before_parse']:.0f} MiB")
    if "parse_s" in out:
        print(f"JSONL write {out['write_jsonl_s']:.2f} s; parse {out['parse_s']:.2f} s wall ({out['parse_cpu_s']:.2f} s CPU) "
              f"= {out['parse_tokens_per_s'] / 1e6:.1f} M tokens/s; "
              f"process max RSS {out['max_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
