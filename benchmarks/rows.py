"""The summary rows: one per (workload, engine, variant), the medians of its runs, and their table cells.

Invariant: a row's numbers are medians over its successful runs of this invocation only; a row with no
successful run carries the last error and no numbers.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

from benchmarks.flops import ModelSize, mfu
from benchmarks.peers.base import RunOutcome


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
    prompt_tokens: int = 0  # the workload's, as the engine counted them
    prompt_tps: float = 0.0
    output_tps: float = 0.0
    saving_ratio: float = 0.0  # 1 - computed / prompt tokens
    peak_rss_mib: float = 0.0
    peak_kv_mib: float | None = None
    mfu: float = 0.0
    others_share: float = 0.0  # worst run
    # with batchllm's variant-free run: the share of identical outputs (pooled: pooled_report's measure)
    agreement: float | None = None
    extra: dict | None = None

    @property
    def prompt_tps_with_startup(self) -> float:
        """Prompt tokens over the median wall with start-up (prompt_tps is over the wall without)."""
        return self.prompt_tokens / self.total_s if self.total_s else 0.0


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
            total_s=statistics.median(r.total_s for r in ok), gen_s=gen, prompt_tokens=first.prompt_tokens,
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



def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)



def header(columns: tuple[str, ...]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def error_row(label: str, error: str | None, columns: int) -> str:
    first_line = error.splitlines()[0][:160] if error else ""
    return f"| {label} | error: {first_line} |" + " |" * (columns - 2)

