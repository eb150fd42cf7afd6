"""Simulated split of the 20,000-request paper file over many workers: `python -m benchmarks.shard_sim`.

No model runs: costs are the sharder's estimates (batchcli.planning.sharding.CPU_COSTS). For each worker count,
the prefix-aware sharder against a prefix-blind round-robin split (request i to worker i mod N, what
Ray Data's row-wise spreading amounts to), each worker's prefill being its own plan's (every shared
segment computed once per worker that holds a member). Skew = max / mean - 1 of the workers' estimated
seconds, the sharder's parts pulled in order by free workers.
"""

from __future__ import annotations

import argparse
import time

from batchcli.planning.shard import Shard, plan_requests
from batchcli.planning.plan import PlanSettings
from batchcli.params import SamplingParams
from batchcli.planning.sharding import CPU_COSTS, make_shards, pull_loads, skew
from benchmarks import synth


def _cost(prefill: int, output: int) -> float:
    return prefill * CPU_COSTS.prefill_s + output * CPU_COSTS.decode_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shard_sim", description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="8,64,512", help="comma-separated worker counts")
    args = p.parse_args(argv)
    w = synth.paper()
    params = tuple(SamplingParams(max_tokens=int(m)) for m in w.max_tokens)
    plan = plan_requests(w.tokens, params, PlanSettings(), model="sim", fingerprint="sim", errors=0)
    whole = Shard(tuple(range(len(params))), w.tokens, params, plan)
    base = plan.stats.physical_prefill_tokens
    print(f"{len(whole):,} requests, {plan.stats.logical_prefill_tokens:,} prompt tokens, {base:,} with each "
          f"shared prefix once; costs {CPU_COSTS}")
    print("| workers | parts | sharder: skew | sharder: finish (est. s) | sharder: prefill recomputed | make_shards (s) "
          "| round-robin: skew | round-robin: finish (est. s) | round-robin: prefill recomputed "
          "| prefill saved vs round-robin |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.workers.split(",")):
        started = time.perf_counter()
        result = make_shards(whole, n)
        took = time.perf_counter() - started
        loads = pull_loads([part.cost for part in result.parts], n)
        rr = [whole.subset(list(range(k, len(whole), n))) for k in range(n)]
        rr_prefill = [s.plan.stats.physical_prefill_tokens for s in rr]
        rr_loads = [_cost(pf, s.output_budget) for pf, s in zip(rr_prefill, rr)]
        ours_total = base + result.recomputed_prefill_tokens
        saved = sum(rr_prefill) - ours_total
        print(f"| {n} | {len(result.parts):,} | {skew(loads):.3f} | {max(loads):,.0f} | "
              f"{result.recomputed_prefill_tokens:,} ({result.recomputed_prefill_tokens / base:.1%}) | {took:.2f} | "
              f"{skew(rr_loads):.3f} | {max(rr_loads):,.0f} | "
              f"{sum(rr_prefill) - base:,} ({(sum(rr_prefill) - base) / base:.1%}) | "
              f"{saved:,} ({saved / sum(rr_prefill):.1%} of round-robin's prefill) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
