"""Entry point: `python -m benchmarks [--quick] [--model DIR] [--only NAME,...] [--peers batchllm,vllm,...]`.

Measures the machine (matmul peak per dtype), builds the workloads, runs every engine on them and
writes benchmarks/RESULTS.md and benchmarks/results.json (or --out DIR). Invariant: the dtype given
to every engine is the same one, and MFU is taken against the peak of that dtype measured here.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.flops import model_size
from benchmarks.machine import flag_summary, machine_info
from benchmarks.runner import Settings, log, run_all
from benchmarks.pooled import pooled_benches
from benchmarks.workloads import PEER_CHOICES, ablation_bench, benches

HERE = Path(__file__).resolve().parent


def default_model() -> Path:
    """The project's cached default model (SmolLM2-135M-Instruct as an HF directory)."""
    from batchcli.model_store import default_model_dir  # the project's cache lookup, converting on first use

    return Path(default_model_dir())


def csv(choices: tuple[str, ...] | None):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if choices is not None and x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices or ())}")
        return items
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small workloads, one pass (~2 minutes)")
    p.add_argument("--model", type=Path, help="HF model directory (default: the project's cached SmolLM2-135M)")
    names = tuple(b.name for b in [*benches(False), ablation_bench(False), *pooled_benches(False)])
    p.add_argument("--only", type=csv(names), default=(), help="comma-separated bench names")
    p.add_argument("--peers", type=csv(PEER_CHOICES), default=PEER_CHOICES, help="comma-separated engines")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: the dtype with the higher measured matmul peak")
    p.add_argument("--repeats", type=int, help="passes over the batchllm/vLLM runs (default 3, --quick 1)")
    p.add_argument("--budget", type=float, default=900.0, help="seconds after which no new repeat pass starts")
    p.add_argument("--noise-limit", type=float, default=0.05, help="others' CPU share that triggers a re-run")
    p.add_argument("--timeout", type=float, help="seconds per run (default 600, --quick 180)")
    p.add_argument("--batchllm", type=Path, default=Path(sys.executable).with_name("batchllm"),
                   help="the batchllm executable to benchmark (default: this venv's)")
    p.add_argument("--out", type=Path, default=HERE, help="folder for RESULTS.md and results.json")
    p.add_argument("--work-dir", type=Path, default=HERE / ".work" / "run", help="inputs, outputs and logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    model = (args.model or default_model()).resolve()
    size = model_size(model)
    log("measuring the matmul peak ...")
    machine = machine_info()
    dtype = args.dtype if args.dtype != "auto" else max(machine.peak_gflops, key=machine.peak_gflops.get)
    settings = Settings(
        quick=args.quick, model=model, dtype=dtype, peers=args.peers, only=args.only,
        repeats=args.repeats or (1 if args.quick else 3), budget_s=args.budget, noise_limit=args.noise_limit,
        work_dir=args.work_dir, run_timeout_s=args.timeout or (180.0 if args.quick else 600.0),
        batchllm_exe=args.batchllm,
    )
    log(f"{machine.cpu_model} ({flag_summary(machine.cpu_family, machine.cpu_flags)}), peaks {machine.peak_gflops} "
        f"GFLOP/s; dtype {dtype}; model {model}")
    built, runs = run_all(settings)
    meta = {"command": shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)]),
            "started": started, "elapsed_s": time.perf_counter() - t0, "model": str(model), "dtype": dtype,
            "noise_limit": settings.noise_limit, "quick": settings.quick, "peers": list(settings.peers)}
    args.out.mkdir(parents=True, exist_ok=True)
    paths = report.write(args.out, meta, machine, built, runs, size)
    log(f"wrote {paths[0]} and {paths[1]}")
    return 0 if all(r.ok for r in runs) else 3


if __name__ == "__main__":
    sys.exit(main())
