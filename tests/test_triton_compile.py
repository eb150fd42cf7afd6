"""Every Triton kernel of batchcli.kernels compiles for sm_90 and sm_80, fits, and spills nothing.

The interpreter (TRITON_INTERPRET=1, the rest of the suite) checks the numbers but not what a GPU
compile enforces: tl.dot's shape and dtype rules, layouts, shared memory and registers. Here
helpers_triton_compile.py compiles the kernels with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))` down to a cubin (Triton ships ptxas), each configuration built
as `TritonAttention.run` launches it, in a fresh interpreter with an empty Triton cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import pytest

from helpers_triton_compile import ARCHS, DTYPES, PROBES, checked_cases

pytest.importorskip("triton", reason="triton is not installed")

WORKER = Path(__file__).with_name("helpers_triton_compile.py")
SHARED_LIMIT = {90: 228 * 1024, 80: 164 * 1024}  # bytes of shared memory one block may use


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_CACHE_DIR": str(tmp_path_factory.mktemp("triton-cache")), "PYTHONSAFEPATH": "1"}
    done = subprocess.run([sys.executable, str(WORKER)], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _label(r: dict) -> str:
    c = r["case"]
    return f"{r['kernel']} sm_{c['arch']} {c['dtype']} d={c['head_dim']} G={c['group']} bs={c['block_size']}"


def test_every_checked_configuration_compiles_fits_and_does_not_spill(compiled):
    records = [r for r in compiled if r["probe"] is None]
    got = sorted((tuple(r["case"].values()), r["kernel"]) for r in records)
    assert got == sorted((astuple(c), k) for c in checked_cases() for k in ("_tile_kernel", "_merge_kernel"))
    errors = [f"{_label(r)}: {r['error']}" for r in records if "error" in r]
    assert not errors, "\n".join(errors)
    too_big = [f"{_label(r)}: {r['shared']} bytes" for r in records if r["shared"] > SHARED_LIMIT[r["case"]["arch"]]]
    assert not too_big, "shared memory over the target's limit:\n" + "\n".join(too_big)
    spills = [f"{_label(r)}: {r['stack']} bytes stack, {r['local']} local, {r['reg']} registers"
              for r in records if r["stack"] or r["local"]]
    assert not spills, "registers spill:\n" + "\n".join(spills)


def test_the_checked_cases_cover_the_harness_shapes():
    cases = checked_cases()
    for arch in ARCHS:
        for dtype in DTYPES:
            assert {c.head_dim for c in cases if c.arch == arch and c.dtype == dtype} >= {64, 128}, (arch, dtype)
        # G_pad 1, 4 and 8 (and a group that is padded) at both head sizes of the default dtype
        for head_dim in (64, 128):
            assert {c.group for c in cases if (c.arch, c.dtype, c.head_dim) == (arch, "bfloat16", head_dim)} >= {1, 3, 8}


def test_the_check_sees_what_the_interpreter_cannot(compiled):
    """The kernel's launch before this check (4 warps at head_dim 128) runs under the interpreter,
    but on sm_80 it spills registers: the check must say so."""
    (probe,) = PROBES
    tile = next(r for r in compiled if r["probe"] == probe.name and r["kernel"] == "_tile_kernel")
    assert "error" not in tile and tile["num_warps"] == 4 and tile["stack"] > 0, tile

