"""Turns measured runs into benchmarks/results.json and this CPU family's section of benchmarks/RESULTS.md.

Invariant: every number written comes from a RunOutcome of this invocation or from the machine
measured in it; an engine with no successful run shows its error, never a guessed number.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import results_file
from benchmarks.flops import ModelSize, mfu
from benchmarks.machine import MachineInfo, flag_summary
from benchmarks.peers.base import RunOutcome
from benchmarks.pooled import PooledBuilt, agreement, agrees
from benchmarks.workloads import Built

MFU_FORMULA = ("MFU = FLOPs / (wall without start-up x measured torch.mm peak of the run's dtype), "
               "FLOPs = 2 x body x (C + O) + 2 x head x O + attn x P; body = weights other than the token embedding "
               "and LM head, head = vocab x hidden, C = prompt tokens computed (batchllm: prompt x (1 - its plan's "
               "saving ratio); others: prompt - prefix-cache hits), O = output tokens, attn = 4 x layers x heads x "
               "head_dim, P = the workload's (query, key) pairs with every shared prefix computed once (the same for "
               "every engine: useful attention work). Padding is not counted.")


@dataclass(frozen=True, slots=True)
class Row:
    """The median over the successful runs of one engine (and variant) on one workload."""

    workload: str
    peer: str
    variant: str
    runs: int
    error: str | None
    total_s: float = 0.0
    gen_s: float = 0.0
    prompt_tps: float = 0.0
    output_tps: float = 0.0
    saving_ratio: float = 0.0  # 1 - computed / prompt tokens
    peak_rss_mib: float = 0.0
    peak_kv_mib: float | None = None
    mfu: float = 0.0
    others_share: float = 0.0  # worst run
    agreement: float | None = None  # share of outputs identical to batchllm's (same variant-free run)
    extra: dict | None = None


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


def same_outputs(a: str, b: str) -> float | None:
    """Share of request ids whose outputs match: token ids where both files have them, else text."""
    def load(path: str) -> dict[str, dict]:
        with open(path) as f:
            return {r["id"]: r for r in map(json.loads, filter(str.strip, f))}

    try:
        ra, rb = load(a), load(b)
    except (OSError, ValueError, KeyError):
        return None
    ids = ra.keys() & rb.keys()
    if not ids:
        return None

    def key(x: dict, y: dict) -> str:
        return "token_ids" if "token_ids" in x and "token_ids" in y else "text"

    return sum(ra[i].get(key(ra[i], rb[i])) == rb[i].get(key(ra[i], rb[i])) for i in ids) / len(ids)


def summarise(runs: list[RunOutcome], size: ModelSize, peak_gflops: float,
              attention_pairs: dict[str, int] | None = None) -> list[Row]:
    """One row per (workload, engine, variant); `attention_pairs` per workload (benchmarks.flops) for MFU."""
    groups: dict[tuple[str, str, str], list[RunOutcome]] = {}
    for r in runs:
        groups.setdefault((r.workload, r.peer.split("-kv")[0], r.variant), []).append(r)
    rows = []
    for (workload, peer, variant), rs in groups.items():
        ok = [r for r in rs if r.ok]
        if not ok:
            rows.append(Row(workload, peer, variant, 0, rs[-1].error))
            continue
        gen = statistics.median(r.gen_s for r in ok)
        first = ok[0]
        computed = first.computed_prompt_tokens
        kv = [r.extra["peak_kv_bytes"] for r in ok if "peak_kv_bytes" in r.extra]
        extra = {k: v for k, v in first.extra.items() if k not in ("pass", "peak_kv_bytes")}
        rows.append(Row(
            workload, peer, variant, len(ok), None,
            total_s=statistics.median(r.total_s for r in ok), gen_s=gen,
            prompt_tps=first.prompt_tokens / gen, output_tps=first.completion_tokens / gen,
            saving_ratio=1 - computed / max(first.prompt_tokens, 1),
            peak_rss_mib=max(r.peak_rss_mib for r in ok), peak_kv_mib=max(kv) / 2**20 if kv else None,
            mfu=mfu(size, computed, first.completion_tokens, gen, peak_gflops, (attention_pairs or {}).get(workload, 0)),
            others_share=max(r.others_share for r in ok), extra=extra,
        ))
    return with_agreement(rows, runs)


def with_agreement(rows: list[Row], runs: list[RunOutcome]) -> list[Row]:
    """Compare each engine's first successful output file with batchllm's on the same workload."""
    first_out = {}
    for r in runs:
        if r.ok and r.variant in ("", "default"):
            first_out.setdefault((r.workload, r.peer.split("-kv")[0]), r.out_path)
    out = []
    for row in rows:
        mine, ref = first_out.get((row.workload, row.peer)), first_out.get((row.workload, "batchllm"))
        agree = same_outputs(mine, ref) if row.peer != "batchllm" and mine and ref else None
        out.append(Row(**{**asdict(row), "agreement": agree}))
    return out


def with_pooled_agreement(rows: list[Row], runs: list[RunOutcome], pooled: set[str]) -> list[Row]:
    """On pooled workloads an engine's agreement is pooled.agreement of its first output with batchllm's
    (embeddings: smallest cosine; rerank: largest score difference), not a share of equal lines."""
    first_out = {}
    for r in runs:
        if r.ok and r.workload in pooled:
            first_out.setdefault((r.workload, r.peer, r.variant), r.out_path)
    out = []
    for row in rows:
        if row.workload in pooled:
            ref, mine = first_out.get((row.workload, "batchllm", "")), first_out.get((row.workload, row.peer, row.variant))
            same = (row.peer, row.variant) == ("batchllm", "")
            row = Row(**{**asdict(row), "agreement": agreement(row.workload, mine, ref) if ref and mine and not same else None})
        out.append(row)
    return out


@dataclass(frozen=True, slots=True)
class PooledRatio:
    """batchllm's prompt tokens per second (generation time, sharing on) over another engine's, same run."""

    workload: str
    other: str  # "--sharing off" or "transformers"
    ratio: float | None  # None where the outputs disagree or a run failed
    agreement: float | None


def pooled_ratios(rows: list[Row], dtype: str) -> list[PooledRatio]:
    """Over the rows of pooled workloads only."""
    ok = {(r.workload, r.peer, r.variant): r for r in rows if r.runs}
    out = []
    for (workload, peer, variant), r in ok.items():
        ref = ok.get((workload, "batchllm", ""))
        if ref is None or (peer, variant) == ("batchllm", ""):
            continue
        fine = r.agreement is not None and agrees(workload, r.agreement, dtype)
        out.append(PooledRatio(workload, "--sharing off" if variant else peer,
                               ref.prompt_tps / r.prompt_tps if fine else None, r.agreement))
    return out


def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


BENCH_COLUMNS = ("engine", "runs", "wall with start-up (s)", "wall without (s)", "prompt tok/s", "output tok/s",
                 "batchllm speed-up without / with start-up", "saving ratio", "peak RSS (MiB)", "peak KV (MiB)",
                 "MFU", "others' CPU", "outputs = batchllm's")
POOLED_COLUMNS = ("engine", "runs", "wall with start-up (s)", "wall without (s)", "prompt tok/s",
                  "batchllm speed-up per token without start-up", "saving ratio", "others' CPU",
                  "agreement with batchllm")
ABLATION_COLUMNS = ("variant", "wall without start-up (s)", "total tok/s", "vs default", "saving ratio",
                    "peak KV (MiB)", "steps", "preemptions")


def header(columns: tuple[str, ...]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def error_row(label: str, error: str | None, columns: int) -> str:
    first_line = error.splitlines()[0][:160] if error else ""
    return f"| {label} | error: {first_line} |" + " |" * (columns - 2)


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


def pooled_table(rows: list[Row], dtype: str) -> list[str]:
    """A pooled workload's engines; agreement: smallest cosine (embeddings) or largest score difference (rerank)."""
    ratios = {r.other: r for r in pooled_ratios(rows, dtype)}
    lines = header(POOLED_COLUMNS)
    for r in rows:
        label = r.peer + (" --sharing off" if r.variant else "")
        if not r.runs:
            lines.append(error_row(label, r.error, len(POOLED_COLUMNS)))
            continue
        ratio = ratios.get("--sharing off" if r.variant else r.peer)
        speed = ("–" if ratio is None else "outputs disagree" if ratio.ratio is None else f"{ratio.ratio:.2f}x")
        lines.append(f"| {label} | {r.runs} | {r.total_s:.1f} | {r.gen_s:.1f} | {r.prompt_tps:.0f} | {speed} | "
                     f"{r.saving_ratio:.3f} | {r.others_share:.1%} | {fmt(r.agreement, '.5g')} |")
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
         "others = the job alone. Token rates use the wall without start-up. vLLM's start-up includes "
         "torch.compile of the model unless its cache (~/.cache/vllm) already held this configuration. "
         "batchllm-eager is the same `batchllm run` with `--compile off` (eager torch, none of the fused CPU ops); "
         "the line under each table gives the fused path's speed-up over it."),
        "",
    ]


def markdown(meta: dict, built: list[Built], rows: list[Row]) -> str:
    """This run's section of RESULTS.md: the intro, then one table per workload."""
    out = intro(meta)
    fused = {f.workload: f for f in fused_vs_eager(rows)}
    for b in built:
        mine = [r for r in rows if r.workload == b.bench.name]
        if not mine:
            continue
        if isinstance(b, PooledBuilt):
            ref = next((r for r in mine if (r.peer, r.variant) == ("batchllm", "") and r.runs), None)
            tokens = f", {round(ref.prompt_tps * ref.gen_s)} prompt tokens" if ref else ""
            out += [f"## {b.bench.name}", "", f"{b.bench.title}. {b.lines} lines{tokens}. Agreement with batchllm: the "
                    "smallest cosine between an engine's embeddings and batchllm's (embeddings) or the largest "
                    "relevance-score difference (rerank); a speed-up is given only where they agree within the dtype's "
                    "rounding.", ""]
            out += pooled_table(mine, meta["dtype"]) + [""]
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
    data = {**meta, "workloads": [workload_facts(b) for b in built],
            "summary": [asdict(r) for r in rows],
            "fused_vs_eager": [asdict(f) | {"speedup": f.speedup} for f in fused_vs_eager(rows)],
            "pooled_ratios": [asdict(p) for p in pooled_ratios([r for r in rows if r.workload in pooled], meta["dtype"])],
            "runs": [asdict(r) for r in runs]}
    json_path, md_path = folder / "results.json", folder / "RESULTS.md"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    old = md_path.read_text() if md_path.is_file() else ""
    md_path.write_text(results_file.rewrite(old, machine.cpu_family, markdown(meta, built, rows)))
    return json_path, md_path
