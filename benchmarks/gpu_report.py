"""The report of benchmarks.gpu_check: the bars the GPU work is steered by, and one markdown page.

Both read only the JSON report (`gpu_check.json`), whatever parts it holds, so a run cut short, or
one part's failure, still gives a page with everything measured so far. A bar whose numbers are
missing says "not measured", never passes.
"""

from __future__ import annotations

from benchmarks.kernel_bench import Case, Row, table

BARS_KERNEL_PREFIX, BARS_KERNEL_DEGREE = 4096, 64


def _kernel_rows(report: dict) -> list[Row]:
    rows = report["parts"].get("kernel", {}).get("rows", [])
    return [Row(**(r | {"case": Case(**r["case"])})) for r in rows if "error" not in r]


def _e2e_run(report: dict, peer: str, workload: str) -> dict | None:
    runs = report["parts"].get("e2e", {}).get("runs", [])
    return next((r for r in runs if r["peer"] == peer and r["workload"] == workload and not r.get("error")), None)


def _bar(name: str, value: float | None, target: float, unit: str = "x") -> dict:
    return {"bar": name, "value": value, "target": target, "unit": unit, "met": None if value is None else value >= target}


def bars(report: dict) -> list[dict]:
    """Issue 18's bars, each with its measured value (None where not measured) and whether it is met."""
    rows = {(r.case.phase, r.case.prefix, r.case.degree): r for r in _kernel_rows(report)}
    wide = rows.get(("decode", BARS_KERNEL_PREFIX, BARS_KERNEL_DEGREE))
    alone = [r.private_us / r.shared_us for (phase, _, degree), r in rows.items() if phase == "decode" and degree == 1]
    small = report["parts"].get("e2e", {}).get("small_workload")
    ours = _e2e_run(report, "batchllm", small) if small else None
    off = _e2e_run(report, "batchllm sharing-off", small) if small else None
    hf = _e2e_run(report, "transformers", small) if small else None
    tests = report["parts"].get("tests", {})
    greedy = tests.get("greedy_on_cuda")
    return [
        _bar(f"decode attention, prefix {BARS_KERNEL_PREFIX} x {BARS_KERNEL_DEGREE} sharers: shared vs SDPA over gathered KV",
             wide.sdpa_us / wide.shared_us if wide else None, 5.0),
        _bar("decode attention, 1 sharer: shared vs no-share (worst prefix)", min(alone) if alone else None, 1.0),
        _bar("end to end, paper workload: batchllm vs --sharing off", off["gen_s"] / ours["gen_s"] if ours and off else None, 3.0),
        _bar("end to end, paper workload: batchllm vs transformers generate", hf["gen_s"] / ours["gen_s"] if ours and hf else None, 10.0),
        _bar("CUDA greedy tokens equal transformers' (tests passed)", greedy, 1.0, unit="all passed"),
    ]


def _fmt(x: object, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def _e2e_lines(e2e: dict) -> list[str]:
    cfg, model = e2e.get("model_config", {}), e2e.get("model", {})
    lines = [f"Model: random weights, hidden {cfg.get('hidden_size')}, {cfg.get('num_hidden_layers')} layers, "
             f"{cfg.get('num_attention_heads')}/{cfg.get('num_key_value_heads')} heads, vocabulary {cfg.get('vocab_size')} "
             f"({_fmt(model.get('params_body'))} parameters besides embedding and head), made on the device in "
             f"{_fmt(model.get('make_s'), 1)} s. MFU against {_fmt(e2e.get('peak_tflops'), 0)} TFLOP/s.", ""]
    for name, w in e2e.get("workloads", {}).items():
        lines.append(f"- `{name}`: {w['title']}; {w['requests']:,} requests, {w['prompt_tokens']:,} prompt tokens")
    lines += ["", "| engine | workload | total s | gen s | tok/s | output tok/s | MFU | peak GPU GiB | prefill computed | error |",
              "|" + " --- |" * 10]
    for r in e2e.get("runs", []):
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['peer']} | {r['workload']} | {_fmt(r.get('total_s'), 1)} | {_fmt(r.get('gen_s'), 1)} | "
                     f"{_fmt(r.get('tok_s'), 0)} | {_fmt(r.get('out_tok_s'), 0)} | {mfu} | {_fmt(r.get('peak_gpu_gib'), 1)} | "
                     f"{_fmt(r.get('computed_prompt_tokens'))} | {(r.get('error') or '')[:160]} |")
    return lines


def markdown(report: dict) -> str:
    """The whole report as one markdown page."""
    meta, parts = report["meta"], report["parts"]
    lines = [f"# GPU check{' (dry run: CPU, tiny shapes; numbers mean nothing)' if meta.get('dry_run') else ''}", "",
             f"{meta.get('device')}; torch {meta.get('torch')}, triton {meta.get('triton')}, transformers "
             f"{meta.get('transformers')}; started {meta.get('started')}; `{meta.get('command')}`", "",
             "| part | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, part in parts.items():
        lines.append(f"| {name} | {part.get('status')} | {_fmt(part.get('seconds'), 1)} | {(part.get('note') or '')[:200]} |")
    lines += ["", "## Bars", "", "| bar | measured | target | met |", "| --- | --- | --- | --- |"]
    for b in bars(report):
        met = "not measured" if b["met"] is None else ("yes" if b["met"] else "NO")
        lines.append(f"| {b['bar']} | {_fmt(b['value'])} | {b['target']} {b['unit']} | {met} |")
    if "tests" in parts:
        t = parts["tests"]
        lines += ["", "## CUDA tests", "", f"`{t.get('command', '')}`: {t.get('summary', '')}", ""]
        lines += [f"- FAILED {f['name']}: {f['message'][:300]}" for f in t.get("failures", [])]
    if "kernel" in parts:
        k = parts["kernel"]
        lines += ["", "## Attention kernel, one layer", "", f"{k.get('setup')}, {k.get('dtype')}", "",
                  *table(_kernel_rows(report))]
        lines += [f"- {r['case']}: ERROR {r['error'][:300]}" for r in k.get("rows", []) if "error" in r]
    if "e2e" in parts:
        lines += ["", "## End to end", "", *_e2e_lines(parts["e2e"])]
    return "\n".join(lines) + "\n"
