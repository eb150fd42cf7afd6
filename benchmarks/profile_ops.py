"""Where an engine run's time goes: torch.profiler over one job, CPU time summed by op category.

`python -m benchmarks.profile_ops INPUT.jsonl [--max-tokens 32] [--dtype bfloat16] [--top 25]`
runs the job through the library exactly as `batchllm run` does (greedy, ignore_eos), under
torch.profiler, and prints a table of self CPU time per category (linear layers, attention, the
fused element-wise ops, the unfused ones, gathers and copies, everything else) and the top ops.
The categories are what issue 8's before/after profile table in RESULTS.md uses.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch

from batchcli.engine.config import EngineConfig
from batchcli.engine.engine import Engine
from batchcli.engine.native.ops import NativeOps
from batchcli.model_store import cache_dir, resolve_model
from batchcli.pipeline import prepare
from batchcli.planning.plan import PlanSettings
from batchcli.params import SamplingParams

# First match wins: an op name containing one of the words goes to that category.
CATEGORIES = (
    ("linear (mm)", ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm", "mkldnn::_linear")),
    ("attention kernel", ("flash_attention", "scaled_dot_product", "batchllm::paged_attention")),
    ("fused element-wise (ours)", ("batchllm::",)),
    ("gathers and copies", ("index_select", "copy_", "index_copy", "cat", "take", "gather", "as_strided",
                            "contiguous", "clone", "to_copy", "embedding")),
    ("unfused element-wise", ("mul", "add", "sub", "silu", "pow", "rsqrt", "mean", "softmax", "exp", "div",
                              "masked_fill", "where", "neg", "square", "rms_norm", "repeat_interleave")),
)


def _label_native_ops() -> None:
    """Make the fused ops visible to the profiler (ctypes calls are not torch ops) as batchllm::NAME."""
    for name in ("add_rms_norm", "silu_mul", "rope_store_kv", "paged_attention"):
        original = getattr(NativeOps, name)

        def labelled(self, *args, _original=original, _name=name, **kwargs):  # noqa: ANN001, ANN002, ANN003
            with torch.profiler.record_function(f"batchllm::{_name}"):
                return _original(self, *args, **kwargs)

        setattr(NativeOps, name, labelled)


class _Stop:
    requested = False


def categorize(name: str) -> str:
    for category, words in CATEGORIES:
        if any(w in name for w in words):
            return category
    return "other"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_ops", description=__doc__.split("\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    _label_native_ops()
    model_dir = resolve_model(args.model)
    defaults = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    job = prepare(str(args.input), defaults, PlanSettings(), model_dir)
    shard = job.shard()
    engine = Engine(model_dir, EngineConfig(dtype=args.dtype, compile=args.compile), job.tokenizer.decode,
                    native_cache=cache_dir(), work_tokens=shard.work_tokens, block_size=job.plan.settings.block_size)
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        stats = engine.run(shard, lambda e: None, lambda p: None, _Stop(), grammars=job.grammars)
    wall = time.perf_counter() - started
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    per_category: dict[str, float] = defaultdict(float)
    for e in events:
        per_category[categorize(e.key)] += e.self_cpu_time_total / 1e6
    total = sum(per_category.values())
    print(f"wall {wall:.2f} s under the profiler (engine run_s {stats.run_s:.2f} s, {stats.steps} steps); "
          f"self CPU {total:.2f} s")
    print("| category | self CPU (s) | share |\n|---|---|---|")
    for category, seconds in sorted(per_category.items(), key=lambda kv: -kv[1]):
        print(f"| {category} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
    print(f"\ntop {args.top} ops by self CPU time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(f"  {e.self_cpu_time_total / 1e6:7.3f} s {e.count:7d} calls  {e.key}")


if __name__ == "__main__":
    main()
