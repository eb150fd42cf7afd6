"""The one GPU check, ready before a GPU is: `python -m benchmarks.gpu_check [--parts tests,kernel,e2e]`.

On one CUDA GPU (nothing fetched; each part capped, all within --budget, 450 s, sized by estimate
for an H200, where it has not run yet), three parts, each timed, guarded and written out as soon as
it has a result:
  tests   `pytest -m cuda`: the Triton kernel against the float32 reference for every configuration
          default_config picks over head_dim 64/128, GQA groups 1-8, fp16/bf16/fp32 (and no spilled
          registers as the device's own compiler sees them); the engine's greedy tokens on CUDA equal
          transformers' on tiny random models, with shared prefixes, chunked prefill and preemption
  kernel  benchmarks.kernel_bench: shared-prefix kernel vs no-share vs SDPA over gathered KV vs
          FlexAttention, decode and prefill, prefix 1k/4k/16k x sharers 1/16/64, bf16
  e2e     benchmarks.gpu_e2e: `batchllm run` on a random Llama-3-8B-shaped model (bf16, made on the
          device) on the paper workload scaled to 2,048 requests, and on 512 against `--sharing off`
          and transformers `generate`: tokens/s, MFU against 790 TFLOP/s bf16, peak GPU memory
Output, unbuffered, and in $OUT (default benchmarks/.work/gpu): gpu_check.json and gpu_check.md,
rewritten after every result so that a run cut short still reports, and the CUDA tests' log and junit
XML: four files, all a device run brings back; the e2e model, inputs and outputs go to --work-dir.
Invariant: a part that fails or runs out of time leaves the others' results standing; the exit code
is 0 only when every part asked for ran to its end without an error or a failed test.

`--dry-run` runs the same plumbing on the CPU, ~30 s on an idle 2-core machine (Triton under its
interpreter, tiny shapes, a tiny random model, the CUDA tests collected and skipped): CI's check.

Needs on the GPU machine beyond its image (which has torch, triton, transformers, safetensors, numpy,
tokenizers, accelerate, typer, rich, pytest and hypothesis): the wheel of `orjson`, imported on every
path here; batchllm's other runtime dependencies missing there, `gguf` (GGUF models) and
`llguidance` (structured output), are imported only on paths this check does not take. And the
SmolLM2 tokenizer's files in benchmarks/.work/tokenizer (README.md, "GPU", says how to carry both).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks import gpu_e2e, gpu_report, kernel_bench
from benchmarks.peers.base import kill_group

REPO = Path(__file__).resolve().parents[1]
PARTS = ("tests", "kernel", "e2e")
PART_S = {"tests": 150.0, "kernel": 100.0, "e2e": 240.0}  # each part's cap; --budget bounds them together
CUDA_TEST_FILES = ("tests/test_kernel.py", "tests/test_engine.py")  # every `cuda`-marked test lives here
TOKENIZER_DIR = REPO / "benchmarks" / ".work" / "tokenizer"
H200_BF16_TFLOPS = 790.0  # an 8192^3 bf16 matmul measured on this workplace's H200s (device notes)


class Report:
    """The JSON report and its markdown page, rewritten whole (atomically) at every `save`."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out, self.data = out, {"meta": meta, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=1, default=str)),
                           ("gpu_check.md", gpu_report.markdown(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)


def _stream(cmd: list[str], env: dict, log: Path, timeout_s: float) -> int | None:
    """Run cmd, echoing and logging its output line by line; None if it was killed at timeout_s."""
    killed = threading.Event()
    with open(log, "w") as f, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, start_new_session=True) as proc:
        timer = threading.Timer(max(timeout_s, 1.0), lambda: (killed.set(), kill_group(proc)))
        timer.start()
        for line in proc.stdout:
            print(line, end="", flush=True)
            f.write(line)
        rc = proc.wait()
        timer.cancel()
    return None if killed.is_set() else rc


def _junit(path: Path) -> tuple[dict, list[dict], list[dict]]:
    """(counts, failures, every test case's name and outcome) from pytest's junit XML."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failures, cases = [], []
    for case in suite.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcome = "failed" if bad is not None else "skipped" if case.find("skipped") is not None else "passed"
        cases.append({"name": case.get("name"), "outcome": outcome})
        if bad is not None:
            failures.append({"name": f"{case.get('classname')}::{case.get('name')}", "message": bad.get("message", "")})
    return counts, failures, cases


def part_tests(args: argparse.Namespace, part: dict, deadline: float, save: Callable[[], None]) -> None:
    xml = args.out / "cuda_tests.xml"
    # most of the time is Triton compiling ~100 kernel configurations one by one: spread it over the
    # machine's cores with pytest-xdist where it is installed (the GPU image has it)
    workers = ["-n", str(min(8, os.cpu_count() or 1))] if importlib.util.find_spec("xdist") and not args.dry_run else []
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *workers, f"--junitxml={xml}",
           *CUDA_TEST_FILES]
    part["command"] = shlex.join(["python", *cmd[1:]])
    save()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}
    rc = _stream(cmd, env, args.out / "cuda_tests.log", deadline - time.monotonic())
    if rc is None or not xml.is_file():
        part.update(status="timeout" if rc is None else "error", note=f"pytest exit {rc}; see cuda_tests.log")
        return
    counts, failures, cases = _junit(xml)
    greedy = [c["outcome"] for c in cases if c["name"].startswith("test_greedy_on_cuda")]
    ran = [o for o in greedy if o != "skipped"]
    part.update(status="ok" if rc == 0 else "failed", counts=counts, failures=failures,
                summary=", ".join(f"{v} {k}" for k, v in counts.items()),
                greedy_on_cuda=ran.count("passed") / len(ran) if ran else None)


def _once(fn: Callable[[], object]) -> float:
    """Milliseconds of one call: the dry run's timer (the interpreter's times mean nothing)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def part_kernel(args: argparse.Namespace, part: dict, deadline: float, save: Callable[[], None]) -> None:
    """Every case's kernel, no-share and SDPA times first; then FlexAttention (compiled anew for each case,
    so the slowest column) over the same cases while time is left."""
    if args.dry_run:
        setup, dtype, device, timer = kernel_bench.Setup(4, 2, 16, 16, 5, 8), torch.float32, torch.device("cpu"), _once
        todo = kernel_bench.cases(setup, (32,), (1, 2))
    else:
        setup, dtype, device, timer = kernel_bench.Setup(), torch.bfloat16, torch.device("cuda"), kernel_bench.cuda_timer
        todo = kernel_bench.cases(setup, (1024, 4096, 16384), (1, 16, 64))
    part.update(setup=asdict(setup), dtype=str(dtype).removeprefix("torch."), rows=[])
    done: list[tuple[int, kernel_bench.Row]] = []
    for case in todo:
        if time.monotonic() > deadline:
            part.update(status="timeout", note=f"{len(todo) - len(part['rows'])} cases not run: out of time")
            return
        try:
            row = kernel_bench.run_case(case, dtype, device, setup, timer)
            done.append((len(part["rows"]), row))
            part["rows"].append(asdict(row))
        except Exception as exc:  # one case's failure (an OOM, a compile error) is its row, not the part's end
            part["rows"].append({"case": asdict(case), "error": f"{type(exc).__name__}: {exc}"})
        _saved(f"kernel: {case}: {part['rows'][-1].get('error', 'done')}", save, device)
    flexed = 0
    for i, row in sorted(done, key=lambda d: -d[1].case.degree):  # the widest sharing first: what FlexAttention is for
        if time.monotonic() > deadline:
            break
        try:
            part["rows"][i] = asdict(kernel_bench.flex_case(row, dtype, device, setup, timer))
        except Exception as exc:  # its layouts did not fit, say: the row's other columns stand
            part["rows"][i]["flex_note"] = f"{type(exc).__name__}: {exc}"[:200]
        flexed += 1
        _saved(f"kernel flex: {row.case}: {part['rows'][i]['flex_note'] or 'done'}", save, device)
    errors = sum("error" in r for r in part["rows"])
    notes = [f"{errors} cases failed"] if errors else []
    notes += [f"FlexAttention timed on {flexed} of {len(todo)} cases"] if flexed < len(todo) else []
    part.update(status="failed" if errors else "ok", note="; ".join(notes))


def _saved(line: str, save: Callable[[], None], device: torch.device) -> None:
    print(line, flush=True)
    save()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the next case's layouts (up to 16k x 64 requests) need the room


def _tokenizer(args: argparse.Namespace) -> Path:
    if args.tokenizer is not None:
        return args.tokenizer
    if TOKENIZER_DIR.is_dir():
        return TOKENIZER_DIR
    from batchcli.model_store import default_model_dir  # the default model's own files (converted once)

    return Path(default_model_dir())


def part_e2e(args: argparse.Namespace, part: dict, deadline: float, save: Callable[[], None]) -> None:
    scale = gpu_e2e.DRY if args.dry_run else gpu_e2e.GPU
    device = torch.device("cpu" if args.dry_run else "cuda")
    part["small_workload"] = gpu_e2e.benches(scale)[1].name
    result = gpu_e2e.run(args.work_dir, scale, _tokenizer(args), device, args.peak_tflops, deadline,
                         lambda r: (part.update(r), save()))
    errors = [r for r in result["runs"] if r.get("error")]
    part.update(status="failed" if errors else "ok", note="; ".join(f"{r['peer']}: {r['error'][:80]}" for r in errors))


RUNNERS = {"tests": part_tests, "kernel": part_kernel, "e2e": part_e2e}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()), default=PARTS,
                   help=f"comma-separated, in this order: {','.join(PARTS)} (default: all)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks" / ".work" / "gpu"),
                   help="folder for gpu_check.json, gpu_check.md and logs (default: $OUT, else benchmarks/.work/gpu)")
    p.add_argument("--work-dir", type=Path, default=REPO / "benchmarks" / ".work" / "gpu-run",
                   help="the e2e model (16 GB on a GPU), workloads, outputs and logs; kept out of --out, whose "
                        "files a device run brings back (default benchmarks/.work/gpu-run)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together (default 450)")
    p.add_argument("--tokenizer", type=Path, help="a folder with tokenizer.json and tokenizer_config.json for the "
                   "e2e model (default: benchmarks/.work/tokenizer, else the default model's)")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS, help="the MFU denominator (default 790)")
    p.add_argument("--dry-run", action="store_true", help="the same plumbing on the CPU: tiny shapes, interpreter")
    args = p.parse_args(argv)
    bad = [x for x in args.parts if x not in PARTS]
    if bad or not args.parts:
        p.error(f"--parts: unknown {bad or 'none given'}; choose from {','.join(PARTS)}")
    if not args.budget > 0:
        p.error(f"--budget must be > 0 seconds, got {args.budget}")
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device here: run on a GPU machine, or --dry-run to check the plumbing on the CPU")
    return args


def _meta(args: argparse.Namespace, argv: list[str]) -> dict:
    import transformers
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU"
    return {"command": shlex.join(["python", "-m", "benchmarks.gpu_check", *argv]), "dry_run": args.dry_run,
            "started": datetime.datetime.now().isoformat(timespec="seconds"), "device": device,
            "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
            "budget_s": args.budget, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported: they run on the CPU
    report = Report(args.out, _meta(args, argv))
    end = time.monotonic() + args.budget
    for name in (p for p in PARTS if p in args.parts):
        part = report.data["parts"][name] = {"status": "running"}
        report.save()
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            RUNNERS[name](args, part, min(started + PART_S[name], end), report.save)
        except Exception as exc:  # the part's own failure: recorded, and the next part runs
            traceback.print_exc()
            part.update(status="error", note=f"{type(exc).__name__}: {exc}")
        part["seconds"] = time.monotonic() - started
        report.save()
        print(f"== {name}: {part['status']} in {part['seconds']:.0f} s {part.get('note', '')}", flush=True)
    print(f"wrote {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'}", flush=True)
    return 0 if all(p["status"] == "ok" for p in report.data["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
