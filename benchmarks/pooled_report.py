"""The pooled workloads' part of the report: agreement with batchllm, the check that gates its rates,
batchllm's speed-up ratios, and each pooled workload's table.

Invariant: on a workload with a reference engine (pooled.PooledBench.reference: transformers-embed on
the embeddings), no batchllm rate or ratio is written unless that engine ran and its outputs agree with
batchllm's within the dtype's rounding (pooled.agrees), so a fast wrong answer is never reported. A ratio
also needs the two engines it compares to agree; with start-up, it needs them to have read the same
prompt tokens, since a start-up is spread over the tokens that follow it (transformers-embed embeds a
prefix of the corpus only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from benchmarks.peers.base import RunOutcome
from benchmarks.pooled import PooledBench, PooledBuilt, agreement, agrees
from benchmarks.rows import Row, error_row, fmt, header

SHARING_OFF_LABEL = "--sharing off"
POOLED_COLUMNS = ("engine", "runs", "wall with start-up (s)", "wall without (s)", "prompt tok/s with start-up",
                  "prompt tok/s without", "batchllm speed-up per token without / with start-up", "saving ratio",
                  "others' CPU", "agreement with batchllm")


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


def withheld(bench: PooledBench, rows: list[Row], dtype: str) -> str | None:
    """Why batchllm's rates on this workload are not shown; None when they may be. `rows`: its rows."""
    if bench.reference is None:
        return None
    ref = next((r for r in rows if r.peer == bench.reference and r.runs), None)
    if ref is None or ref.agreement is None:
        return f"unchecked: no {bench.reference} output to check batchllm's against"
    if not agrees(bench.name, ref.agreement, dtype):
        return f"batchllm's outputs disagree with {bench.reference}'s (agreement {ref.agreement:.5g})"
    return None


@dataclass(frozen=True, slots=True)
class PooledRatio:
    """batchllm's prompt tokens per second (sharing on) over another engine's on one workload, same run."""

    workload: str
    other: str  # SHARING_OFF_LABEL or the engine's name
    ratio: float | None  # over the wall without start-up; None where `withheld` says why
    ratio_with_startup: float | None  # over the whole wall; None also where the engines read different tokens
    agreement: float | None
    withheld: str | None = None


def pooled_ratios(bench: PooledBench, rows: list[Row], dtype: str) -> list[PooledRatio]:
    """One per engine (or variant) beside batchllm's default run that has a successful run; `rows`: the workload's."""
    ok = {(r.peer, r.variant): r for r in rows if r.runs}
    ref = ok.get(("batchllm", ""))
    if ref is None:
        return []
    gate = withheld(bench, rows, dtype)
    out = []
    for (peer, variant), r in ok.items():
        if r is ref:
            continue
        fine = r.agreement is not None and agrees(bench.name, r.agreement, dtype)
        why = gate or (None if fine else f"outputs disagree (agreement {fmt(r.agreement, '.5g')})")
        with_startup = r.prompt_tokens == ref.prompt_tokens and not why
        out.append(PooledRatio(bench.name, SHARING_OFF_LABEL if variant else peer,
                               None if why else ref.prompt_tps / r.prompt_tps,
                               ref.prompt_tps_with_startup / r.prompt_tps_with_startup if with_startup else None,
                               r.agreement, why))
    return out


def speed_cell(ratio: PooledRatio | None) -> str:
    """"–" for batchllm's own line; else both speed-ups, or why none is shown."""
    if ratio is None:
        return "–"
    if ratio.withheld:
        return f"not shown: {ratio.withheld}"
    with_startup = "–" if ratio.ratio_with_startup is None else f"{ratio.ratio_with_startup:.2f}x"
    return f"{ratio.ratio:.2f}x / {with_startup}"


def pooled_table(bench: PooledBench, rows: list[Row], dtype: str) -> list[str]:
    """The workload's engines, one line each; batchllm's lines give only the reason when `withheld`."""
    gate = withheld(bench, rows, dtype)
    ratios = {r.other: r for r in pooled_ratios(bench, rows, dtype)}
    lines = header(POOLED_COLUMNS)
    for r in rows:
        label = r.peer + (f" {SHARING_OFF_LABEL}" if r.variant else "")
        if not r.runs:
            lines.append(error_row(label, r.error, len(POOLED_COLUMNS)))
            continue
        if gate and r.peer == "batchllm":
            lines.append(f"| {label} | {r.runs} | rates withheld: {gate} |" + " |" * (len(POOLED_COLUMNS) - 3))
            continue
        speed = speed_cell(ratios.get(SHARING_OFF_LABEL if r.variant else r.peer))
        lines.append(f"| {label} | {r.runs} | {r.total_s:.1f} | {r.gen_s:.1f} | {r.prompt_tps_with_startup:.0f} | "
                     f"{r.prompt_tps:.0f} | {speed} | {r.saving_ratio:.3f} | {r.others_share:.1%} | "
                     f"{fmt(r.agreement, '.5g')} |")
    return lines


def pooled_section(built: PooledBuilt, rows: list[Row], dtype: str) -> list[str]:
    """RESULTS.md's lines for one pooled workload: its heading, what it is and how to read it, its table."""
    bench = built.bench
    gated = f", and batchllm's rates only once its outputs agree with {bench.reference}'s" if bench.reference else ""
    ref = next((r for r in rows if (r.peer, r.variant) == ("batchllm", "") and r.runs), None)
    tokens = f", {ref.prompt_tokens} prompt tokens" if ref else ""
    return [f"## {bench.name}", "",
            f"{bench.title}. {built.lines} lines{tokens}. Agreement with batchllm: the smallest cosine between an "
            "engine's embeddings and batchllm's (embeddings) or the largest relevance-score difference (rerank); a "
            "speed-up is given only where they agree within the dtype's rounding"
            + gated + ". The speed-up with start-up is given only against an engine that read the same prompt tokens.", "",
            *pooled_table(bench, rows, dtype), ""]
