"""Compile batchcli's Triton kernels for real GPU targets (sm_90, sm_80) on a machine without a GPU.

`python tests/helpers_triton_compile.py [--every]` prints one JSON line per compiled kernel: the
case, the kernel, and what the compiled cubin needs (shared memory, registers, stack and local bytes:
a stack frame here is spilled registers), or the compiler's error. test_triton_compile.py runs it in
a fresh interpreter because Triton compiles kernels only when TRITON_INTERPRET is unset at import,
and the test suite sets it.

Each case is built the way `TritonAttention.run` launches it: `default_config` picks the tiles and
warps for the model's shape, `tile_launch` / `merge_launch` give the kernel's arguments and
meta-parameters, and Triton's own rules turn the argument values into the signature a launch
specialises on (pointer alignment, integers divisible by 16 or equal to 1). Invariant: this module
imports only the standard library at the top, so the test can read the cases without Triton.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

ARCHS = (90, 80)  # H100/H200 and A100
SM_COUNT = {90: 132, 80: 108}  # multiprocessors of an H100 SXM and an A100: only the tile plan reads it
DTYPES = ("bfloat16", "float16", "float32")
HEAD_DIMS = (16, 64, 128)  # the tiny test models', Llama-3.2-1B-like and Llama-3-8B-like heads
GROUPS = tuple(range(1, 9))  # query heads per KV head
BLOCK_SIZES = (4, 16, 32)  # the engine tests', the default and a larger KV block
NUM_KV_HEADS = 8


@dataclass(frozen=True, slots=True)
class Case:
    arch: int
    dtype: str
    head_dim: int
    group: int
    block_size: int


@dataclass(frozen=True, slots=True)
class Probe:
    """A case compiled with a hand-made tile config, to show that the check catches a bad one."""

    name: str
    case: Case
    block_m: int
    num_warps: int


def every_case() -> list[Case]:
    return [Case(a, t, d, g, b) for a in ARCHS for t in DTYPES for d in HEAD_DIMS for g in GROUPS for b in BLOCK_SIZES]


def checked_cases() -> list[Case]:
    """The CI set: every dtype and head_dim 64 and 128 on both targets; groups 1, 3 and 8 (one, a padded
    and the widest power of two of G_pad) in bf16; and the tiny engine-test model (fp32, d 16, G 2,
    blocks of 4). What the other cases change (GROUP_PAD's other values, block sizes) is only masks
    and index arithmetic; `--every` compiles them all."""
    picked = []
    for c in every_case():
        main = c.head_dim in (64, 128) and c.block_size == 16
        if (main and c.dtype == "bfloat16" and c.group in (1, 3, 8)) or (main and c.dtype != "bfloat16" and c.group == 4) \
                or (c.dtype == "float32" and c.head_dim == 16 and c.group == 2 and c.block_size == 4):
            picked.append(c)
    return picked


# What the kernel was launched with before this check existed (4 warps at head_dim 128): it spills
# registers on sm_80, which the interpreter cannot see.
PROBES = (Probe("four_warps_at_head_dim_128", Case(80, "bfloat16", 128, 4, 16), block_m=16, num_warps=4),)


def _launches(case: Case, probe: Probe | None):
    """The tile and merge launches of one layer over a small step (a shared segment under decodes and a
    prefill chunk, KV ranges cut so that rows merge partials), with tensors laid out as the model's."""
    import torch

    from batchcli.engine.attention.backend import AttnShape
    from batchcli.engine.attention.metadata import build_metadata
    from batchcli.engine.step import SegmentView, SeqChunk, SeqOwner, StepBatch
    from batchcli.kernels.shared_prefix_attention import TritonAttention, default_config
    from batchcli.kernels.tile_kernels import merge_launch, tile_launch

    dtype, bs, d, n_kv = getattr(torch, case.dtype), case.block_size, case.head_dim, NUM_KV_HEADS
    shape = AttnShape(case.group * n_kv, n_kv, dtype, d)
    cfg = default_config(shape, bs, SM_COUNT[case.arch])
    if probe is not None:
        cfg = replace(cfg, block_m=probe.block_m, num_warps=probe.num_warps)
    seg_blocks = 2048 // bs  # a 2k-token prefix: long enough for the plan to cut it over the SMs
    segment = SegmentView(0, seg_blocks * bs, tuple(range(seg_blocks)))
    chunks, free = [], seg_blocks
    for i, (hist, q_len) in enumerate([(3, 1), (0, 9), (bs + 1, 1)]):  # decode, prefill, decode
        blocks = tuple(range(free, free + -(-(hist + q_len) // bs)))
        free += len(blocks)
        chunks.append(SeqChunk(SeqOwner(i), (1,) * q_len, seg_blocks * bs + hist, seg_blocks * bs, blocks, (0,), True))
    meta = build_metadata(StepBatch(tuple(chunks), {0: segment}), bs, "cpu")
    plan = TritonAttention(shape, cfg).plan(meta)
    t, h = meta.num_tokens, shape.num_heads
    q = torch.empty(t, h + n_kv, d, dtype=dtype)[:, :h]  # [T, H, d]: a view of rope(q|k), as the model's
    kv = torch.empty(1, 2, free, bs, n_kv, d, dtype=dtype)  # [L, 2, blocks, bs, n_kv, d]
    out = torch.empty(t, h, d, dtype=dtype)  # [T, H, d]
    part_o = torch.empty(plan.tiles.num_partials, h, d)  # [P, H, d]
    part_lse = torch.empty(plan.tiles.num_partials, h)  # [P, H]
    merge = merge_launch(out, part_o, part_lse, plan)
    assert merge is not None, "the step is meant to merge partials"
    return [tile_launch(q, kv[0, 0], kv[0, 1], out, part_o, part_lse, plan, 0.1), merge]


def _compile(launch, arch: int):
    """`triton.compile` of the launch for `arch`, specialised on its argument values as a launch would."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    constexprs = {k: v for k, v in launch.meta.items() if k in kernel.arg_names}
    options = {k: v for k, v in launch.meta.items() if k not in kernel.arg_names}
    signature, attrs = {}, {}
    runtime = [p for p in kernel.params if not p.is_constexpr]
    for p, value in zip(runtime, launch.args, strict=True):
        ty, spec = native_specialize_impl(backend, value, p.is_const, not p.do_not_specialize,
                                          not p.do_not_specialize_on_alignment)
        if ty == "constexpr":  # an integer equal to 1 becomes a constant, as in a launch
            constexprs[p.name] = spec
        elif spec:
            attrs[(p.num,)] = backend.parse_attr(spec)
        signature[p.name] = ty
    signature = {p.name: "constexpr" if p.name in constexprs else signature[p.name] for p in kernel.params}
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options)


def _resources(cubin: bytes) -> dict[str, int]:
    """REG, STACK, LOCAL and SHARED of the cubin's kernel, as cuobjdump (shipped with Triton) reports them."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                              check=True, capture_output=True, text=True).stdout
    line = next(x for x in text.splitlines() if "REG:" in x)
    fields = dict(kv.split(":", 1) for kv in line.split() if ":" in kv)
    return {k.lower(): int(fields[k]) for k in ("REG", "STACK", "LOCAL")}


def _records(case: Case, probe: Probe | None = None):
    for launch in _launches(case, probe):
        started = time.perf_counter()
        record = {"case": asdict(case), "probe": probe and probe.name, "kernel": launch.kernel.__name__,
                  "num_warps": launch.meta.get("num_warps", 4)}
        try:
            compiled = _compile(launch, case.arch)
        except Exception as exc:  # a compile error is this check's finding: report it, go on
            yield record | {"error": f"{type(exc).__name__}: {str(exc)[-600:]}"}
            continue
        yield record | {"shared": compiled.metadata.shared, **_resources(compiled.asm["cubin"]),
                        "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str]) -> None:
    cases = every_case() if "--every" in argv else checked_cases()
    for case in cases:
        for record in _records(case):
            print(json.dumps(record), flush=True)
    for probe in PROBES:
        for record in _records(probe.case, probe):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
