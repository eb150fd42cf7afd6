"""Turns measured runs into benchmarks/results.json and this CPU family's section of benchmarks/RESULTS.md.

Invariant: every number written comes from a RunOutcome of this invocation or from the machine
measured in it; an engine with no successful run shows its error, never a guessed number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import results_file
from benchmarks.flops import ModelSize
from benchmarks.machine import MachineInfo, flag_summary
from benchmarks.peers.base import RunOutcome
from benchmarks.pooled import PooledBuilt
from benchmarks.pooled_report import pooled_ratios, pooled_section, with_pooled_agreement
from benchmarks.rows import Row, error_row, fmt, header, summarise
from benchmarks.workloads import Built

MFU_FORMULA = ("MFU = FLOPs / (wall without start-up x measured torch.mm peak of the run's dtype), "
               "FLOPs = 2 x body x (C + O) + 2 x head x O + attn x P; body = weights other than the token embedding "
               "and LM head, head = vocab x hidden, C = prompt tokens computed (batchllm: prompt x (1 - its plan's "
               "saving ratio); others: prompt - prefix-cache hits), O = output tokens, attn = 4 x layers x heads x "
               "head_dim, P = the workload's (query, key) pairs with every shared prefix computed once (the same for "
               "every engine: useful attention work). Padding is not counted.")


@dataclass(frozen=True, slots=True)
class FusedVsEager:
    """batchllm's defaults (fused CPU ops) against `--compile off` (eager torch) on one workload, same run."""

    workload: str
    fused_gen_s: float
    eager_gen_s: float

    @property
    def speedup(self) -> float:
        """Above 1 the fused path is faster."""
        return self.eager_gen_s / self.fused_gen_s


def fused_vs_eager(rows: list[Row]) -> list[FusedVsEager]:
    """One entry per workload on which both batchllm engines have a successful run (medians of each)."""
    ok = {(r.workload, r.peer): r for r in rows if r.runs and not r.variant}
    return [FusedVsEager(w, ok[(w, "batchllm")].gen_s, eager.gen_s)
            for (w, peer), eager in ok.items() if peer == "batchllm-eager" and (w, "batchllm") in ok]


def fused_line(f: FusedVsEager) -> str:
    verdict = "fused >= eager" if f.speedup >= 1 else "fused < eager"
    return (f"Fused vs eager, generation without start-up: batchllm {f.fused_gen_s:.1f} s, batchllm-eager "
            f"{f.eager_gen_s:.1f} s: fused speed-up **{f.speedup:.2f}x** ({verdict}).")


BENCH_COLUMNS = ("engine", "runs", "wall with start-up (s)", "wall without (s)", "prompt tok/s", "output tok/s",
                 "batchllm speed-up without / with start-up", "saving ratio", "peak RSS (MiB)", "peak KV (MiB)",
                 "MFU", "others' CPU", "outputs = batchllm's")
ABLATION_COLUMNS = ("variant", "wall without start-up (s)", "total tok/s", "vs default", "saving ratio",
                    "peak KV (MiB)", "steps", "preemptions")


def bench_table(rows: list[Row]) -> list[str]:
    ref = next((r for r in rows if r.peer == "batchllm" and r.runs), None)
    lines = header(BENCH_COLUMNS)
    for r in rows:
        if not r.runs:
            lines.append(error_row(r.peer, r.error, len(BENCH_COLUMNS)))
            continue
        speed = "–" if ref is None or r is ref else f"{r.gen_s / ref.gen_s:.2f}x / {r.total_s / ref.total_s:.2f}x"
        lines.append(
            f"| {r.peer} | {r.runs} | {r.total_s:.1f} | {r.gen_s:.1f} | {r.prompt_tps:.0f} | {r.output_tps:.0f} | "
            f"{speed} | {r.saving_ratio:.3f} | {r.peak_rss_mib:.0f} | {fmt(r.peak_kv_mib, '.1f')} | {r.mfu:.1%} | "
            f"{r.others_share:.1%} | {fmt(r.agreement, '.0%')} |")
    return lines


def ablation_table(rows: list[Row]) -> list[str]:
    base = next((r for r in rows if r.variant == "default" and r.runs), None)
    lines = header(ABLATION_COLUMNS)
    for r in rows:
        if not r.runs:
            lines.append(error_row(r.variant, r.error, len(ABLATION_COLUMNS)))
            continue
        e = r.extra or {}
        vs = "–" if base is None else f"{base.gen_s / r.gen_s:.2f}x"
        lines.append(f"| {r.variant} | {r.gen_s:.1f} | {r.prompt_tps + r.output_tps:.0f} | {vs} | {r.saving_ratio:.3f} | "
                     f"{fmt(r.peak_kv_mib, '.1f')} | {e.get('steps', '–')} | {e.get('preemptions', '–')} |")
    return lines


def intro(meta: dict) -> list[str]:
    m = meta["machine"]
    peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m["peak_gflops"].items())
    return [
        f"# Results on {m['cpu_family']} — {m['cpu_model']}, measured {meta['started'][:10]}", "",
        (f"Written by `{meta['command']}` on {meta['started']} ({meta['elapsed_s']:.0f} s). Every number below was "
         "measured in that run; engines alternate run by run, and a value is the median of the runs shown. A run "
         f"during which other processes used more than {meta['noise_limit']:.0%} of the machine's CPU was re-run once."),
        "",
        (f"Machine: {m['cpu_model']} ({flag_summary(m['cpu_family'], m['cpu_flags'])}), {m['cores']} CPUs, "
         f"{m['mem_gib']} GiB; Python {m['python']}, torch {m['torch']}. "
         f"Matmul peak (torch.mm 1024^3, 2 threads): {peaks}. Model: `{meta['model']}`, dtype {meta['dtype']} for "
         "every engine."),
        "", MFU_FORMULA, "",
        ("Wall with start-up: batchllm = the whole `batchllm run` process; vLLM and transformers = engine start-up "
         "(paid once per process) + the job. Wall without start-up: batchllm = its metrics' wall_s - model_load_s - tokenizer_load_s (loading "
         "the model and the tokenizer, as a vLLM engine's start-up does); "
         "others = the job alone. Token rates use the wall without start-up unless their column says otherwise. vLLM's start-up includes "
         "torch.compile of the model unless its cache (~/.cache/vllm) already held this configuration. "
         "batchllm-eager is the same `batchllm run` with `--compile off` (eager torch, none of the fused CPU ops); "
         "the line under each table gives the fused path's speed-up over it."),
        "",
    ]


def markdown(meta: dict, built: list[Built | PooledBuilt], rows: list[Row]) -> str:
    """This run's section of RESULTS.md: the intro, then one table per workload."""
    out = intro(meta)
    fused = {f.workload: f for f in fused_vs_eager(rows)}
    for b in built:
        mine = [r for r in rows if r.workload == b.bench.name]
        if not mine:
            continue
        if isinstance(b, PooledBuilt):
            out += pooled_section(b, mine, meta["dtype"])
            continue
        out += [f"## {b.bench.name}", "", f"{b.bench.title}. {b.requests} requests, {b.prompt_tokens} prompt tokens "
                f"({b.shared_tokens} with each shared prefix once), {b.output_tokens} output tokens"
                + (f", KV budget {b.kv_budget_tokens} tokens." if b.kv_budget_tokens else "."), ""]
        out += ablation_table(mine) if b.bench.name == "ablation" else bench_table(mine)
        out.append("")
        if b.bench.name in fused:
            out += [fused_line(fused[b.bench.name]), ""]
    return "\n".join(out)


def workload_facts(b: Built | PooledBuilt) -> dict:
    if isinstance(b, PooledBuilt):
        return {"name": b.bench.name, "title": b.bench.title, "path": str(b.path), "lines": b.lines,
                "peers": list(b.bench.peers)}
    return {"name": b.bench.name, "title": b.bench.title, "path": str(b.path), "requests": b.requests,
            "prompt_tokens": b.prompt_tokens, "shared_tokens": b.shared_tokens, "output_tokens": b.output_tokens,
            "kv_budget_tokens": b.kv_budget_tokens, "peers": list(b.bench.peers)}


def write(folder: Path, meta: dict, machine: MachineInfo, built: list[Built | PooledBuilt], runs: list[RunOutcome],
          size: ModelSize) -> tuple[Path, Path]:
    meta = meta | {"machine": asdict(machine), "mfu_formula": MFU_FORMULA,
                   "model_params": {"body": size.body, "head": size.head}}
    pairs = {b.bench.name: b.attention_pairs for b in built if isinstance(b, Built)}
    rows = summarise(runs, size, machine.peak_gflops[meta["dtype"]], pairs)
    pooled = {b.bench.name for b in built if isinstance(b, PooledBuilt)}
    rows = with_pooled_agreement(rows, runs, pooled)
    rows_of = {b.bench.name: [r for r in rows if r.workload == b.bench.name] for b in built}
    data = {**meta, "workloads": [workload_facts(b) for b in built],
            "summary": [asdict(r) for r in rows],
            "fused_vs_eager": [asdict(f) | {"speedup": f.speedup} for f in fused_vs_eager(rows)],
            "pooled_ratios": [asdict(p) for b in built if isinstance(b, PooledBuilt)
                              for p in pooled_ratios(b.bench, rows_of[b.bench.name], meta["dtype"])],
            "runs": [asdict(r) for r in runs]}
    json_path, md_path = folder / "results.json", folder / "RESULTS.md"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    old = md_path.read_text() if md_path.is_file() else ""
    md_path.write_text(results_file.rewrite(old, machine.cpu_family, markdown(meta, built, rows)))
    return json_path, md_path
