"""Benchmark of the torch shared-prefix attention backend against naive paged attention, per layer call.

Shapes are SmolLM2-135M's attention (9 query heads, 3 KV heads, head dim 64), block size 16:
  decode:  128 decodes, 16 shared segments of 1,024 tokens x 8 members, private tails of 130-160;
  prefill: one 512-token chunk (the first of its private prompt) under a 1,024-token segment;
  mixed:   both in one step.
KV block ids are either shuffled (a pool after churn: every read is a gather) or ascending (a fresh
pool: segments' blocks are evenly spaced runs, which the backend reads in place).
Backends: "shared" is TorchAttention (its plan, built once per step, is timed apart); "native-K" is
the fused CPU ops' paged kernel K (fma, dot: AVX512-BF16, amx: AMX tiles; each that this CPU runs,
on the cache in the native layout, its work list built once per step); "per-request"
gathers each request's full KV (segment + private) and runs SDPA per request; "padded" runs one
SDPA over all requests padded to the longest KV, with a key mask. Gather indices and masks of the
naive ones are built once per step too, so only per-layer work is timed. Invariant: all three are
checked against each other before timing, so the numbers compare the same result.

    python -m benchmarks.attention_bench [--threads 1] [--repeat 10] [--dtype bfloat16,float32]
        [--only decode,prefill,mixed] [--layout shuffled,fresh]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from batchcli.engine.attention.metadata import AttnMetadata, build_metadata
from batchcli.engine.attention.torch_backend import TorchAttention
from batchcli.model_store import cache_dir
from batchcli.engine.native.build import NativeUnavailable, load_native
from batchcli.engine.native.ops import NativeAttention, NativeKV, NativeOps, available_kernels
from batchcli.engine.step import SegmentView, SeqChunk, SeqOwner, StepBatch

N_HEADS, N_KV, HEAD_DIM, BLOCK = 9, 3, 64, 16
SEG_LEN = 1024


@dataclass(frozen=True, slots=True)
class Shape:
    decode_groups: int  # shared segments with decodes under them
    members: int  # decodes per segment
    prefill: int  # tokens of one prefill chunk under its own segment; 0 for none


SHAPES = {"decode": Shape(16, 8, 0), "prefill": Shape(0, 0, 512), "mixed": Shape(16, 8, 512)}


def make_step(shape: Shape, rng: np.random.Generator, shuffled: bool) -> tuple[StepBatch, int]:
    """The step over shuffled blocks (a pool after much churn) or ascending ones (a fresh pool, where
    segments' blocks are runs); returns it and the number of cache blocks."""
    seg_blocks = SEG_LEN // BLOCK
    tails = rng.integers(130, 161, shape.decode_groups * shape.members)  # private KV after this step
    n_segs = shape.decode_groups + (1 if shape.prefill else 0)
    need = n_segs * seg_blocks + int(sum(-(-t // BLOCK) for t in tails)) + -(-shape.prefill // BLOCK)
    free = iter((rng.permutation(need) if shuffled else np.arange(need)).tolist())
    segments = {g: SegmentView(g, SEG_LEN, tuple(next(free) for _ in range(seg_blocks))) for g in range(n_segs)}
    chunks = []
    for i, tail in enumerate(tails.tolist()):
        blocks = tuple(next(free) for _ in range(-(-tail // BLOCK)))
        chunks.append(SeqChunk(SeqOwner(i), (0,), SEG_LEN + tail - 1, SEG_LEN, blocks, (i // shape.members,), True))
    if shape.prefill:
        blocks = tuple(next(free) for _ in range(-(-shape.prefill // BLOCK)))
        chunks.append(SeqChunk(SeqOwner(len(chunks)), (0,) * shape.prefill, SEG_LEN, SEG_LEN, blocks, (n_segs - 1,), True))
    return StepBatch(tuple(chunks), segments), need


@dataclass(frozen=True, slots=True)
class NaiveStep:
    """Per request: its full KV's slots and, for chunks longer than one token, a causal mask."""

    slots: list[torch.Tensor]  # int64 [L_s] per request
    masks: list[torch.Tensor | None]  # bool [q_len, L_s]: bottom-right causal
    padded_slots: torch.Tensor  # int64 [S, L_max]
    padded_mask: torch.Tensor  # bool [S, 1, Q_max, L_max]


def naive_step(step: StepBatch) -> NaiveStep:
    def slots_of(blocks: tuple[int, ...], n: int) -> np.ndarray:
        return (np.array(blocks, dtype=np.int64)[:, None] * BLOCK + np.arange(BLOCK)).reshape(-1)[:n]

    slots, masks = [], []
    for c in step.chunks:
        parts = [slots_of(step.segments[g].block_ids, step.segments[g].length) for g in c.segments]
        full = np.concatenate(parts + [slots_of(c.block_ids, c.private_len)])  # [L]
        slots.append(torch.from_numpy(full))
        q_len = len(c.token_ids)
        mask = torch.ones(q_len, len(full), dtype=torch.bool).tril(len(full) - q_len) if q_len > 1 else None
        masks.append(mask)
    width, depth = max(len(s) for s in slots), max(len(c.token_ids) for c in step.chunks)
    padded = torch.stack([F.pad(s, (0, width - len(s))) for s in slots])  # [S, L_max]
    padded_mask = torch.zeros(len(slots), 1, depth, width, dtype=torch.bool)
    for i, (s, m) in enumerate(zip(slots, masks)):
        padded_mask[i, 0, : (m.shape[0] if m is not None else 1), : len(s)] = True if m is None else m
    return NaiveStep(slots, masks, padded, padded_mask)


def per_request(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata,
                naive: NaiveStep, scale: float) -> torch.Tensor:
    k_flat, v_flat = k_cache.view(-1, N_KV, HEAD_DIM), v_cache.view(-1, N_KV, HEAD_DIM)
    starts = meta.host.q_start
    out = torch.empty_like(q)  # [T, H, d]
    for s, (slots, mask) in enumerate(zip(naive.slots, naive.masks)):
        qs = q[starts[s] : starts[s + 1]].transpose(0, 1)[None]  # [1, H, q_len, d]
        ks = k_flat.index_select(0, slots).transpose(0, 1)[None]  # [1, n_kv, L, d]
        vs = v_flat.index_select(0, slots).transpose(0, 1)[None]  # [1, n_kv, L, d]
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True)
        out[starts[s] : starts[s + 1]] = o[0].transpose(0, 1)
    return out


def padded(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata,
           naive: NaiveStep, scale: float) -> torch.Tensor:
    """All requests padded to the longest chunk and KV; rows then taken back out of the padding."""
    k_flat, v_flat = k_cache.view(-1, N_KV, HEAD_DIM), v_cache.view(-1, N_KV, HEAD_DIM)
    n_seq, width = naive.padded_slots.shape
    depth = naive.padded_mask.shape[2]
    q_len = torch.from_numpy(meta.host.q_len).long()  # [S]
    real = torch.arange(depth)[None, :] < q_len[:, None]  # [S, Q]
    qs = q.new_zeros(n_seq, depth, N_HEADS, HEAD_DIM)
    qs[real] = q  # [S, Q, H, d]
    ks = k_flat.index_select(0, naive.padded_slots.view(-1)).view(n_seq, width, N_KV, HEAD_DIM)  # [S, L, n_kv, d]
    vs = v_flat.index_select(0, naive.padded_slots.view(-1)).view(n_seq, width, N_KV, HEAD_DIM)  # [S, L, n_kv, d]
    o = F.scaled_dot_product_attention(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2),
                                       attn_mask=naive.padded_mask, scale=scale, enable_gqa=True)  # [S, H, Q, d]
    return o.transpose(1, 2)[real]  # [T, H, d]


def native_runs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttnMetadata,
                dtype: torch.dtype, scale: float) -> dict[str, Callable[[], torch.Tensor]]:
    """One run per native attention kernel this CPU has; none where the fused ops cannot be built."""
    try:
        lib = load_native(cache_dir())
    except NativeUnavailable:
        return {}
    kv = NativeKV.from_standard(k_cache, v_cache)
    runs = {}
    for kernel in available_kernels(lib) if dtype == torch.bfloat16 else ("fma",):
        native = NativeAttention(NativeOps(lib, dtype, kernel), N_KV, N_HEADS // N_KV)
        work = native.plan(meta)
        runs[f"native-{kernel}"] = lambda native=native, work=work: native.run(q, kv.keys, kv.values, work, scale)
    return runs


def time_calls(fn: Callable[[], torch.Tensor], repeat: int) -> float:
    """Median CPU seconds of this process per call, after one warm-up call. CPU time, not wall time:
    on a machine shared with other jobs, wall time measures the neighbours as much as the code."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def bench_shape(name: str, dtype: torch.dtype, layout: str, repeat: int) -> None:
    step, num_blocks = make_step(SHAPES[name], np.random.default_rng(0), shuffled=layout == "shuffled")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(step.num_tokens, N_HEADS, HEAD_DIM, generator=gen).to(dtype)  # [T, H, d]
    k_cache = torch.randn(num_blocks, BLOCK, N_KV, HEAD_DIM, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, BLOCK, N_KV, HEAD_DIM, generator=gen).to(dtype)
    scale = 1 / math.sqrt(HEAD_DIM)
    backend = TorchAttention(dtype)
    meta = build_metadata(step, BLOCK)
    backend.run(q, k_cache, v_cache, backend.plan(meta), scale)  # warm-up
    metadata, plan = [], []  # per fresh step: build_metadata, and the backend's plan
    for _ in range(repeat):
        start = time.process_time()
        meta = build_metadata(step, BLOCK)
        metadata.append(time.process_time() - start)
        start = time.process_time()
        step_plan = backend.plan(meta)
        plan.append(time.process_time() - start)
    shared = backend.run(q, k_cache, v_cache, step_plan, scale)
    naive = naive_step(step)
    runs = {
        "shared": lambda: backend.run(q, k_cache, v_cache, step_plan, scale),
        "per-request": lambda: per_request(q, k_cache, v_cache, meta, naive, scale),
        "padded": lambda: padded(q, k_cache, v_cache, meta, naive, scale),
    } | native_runs(q, k_cache, v_cache, meta, dtype, scale)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for label in (k for k in runs if k != "shared"):
        err = (runs[label]().float() - shared.float()).abs().max().item()
        if err > tol:
            raise RuntimeError(f"{name}/{dtype}: {label} differs from shared by {err:.3g} (> {tol})")
    times = {label: time_calls(fn, repeat) for label, fn in runs.items()}
    print(f"{name:8} {str(dtype)[6:]:9} {layout:9} T={step.num_tokens:<4} "
          + "  ".join(f"{label} {t * 1e3:7.2f} ms" for label, t in times.items())
          + f"  | speed-up x{times['per-request'] / times['shared']:.1f} vs per-request,"
          f" x{times['padded'] / times['shared']:.1f} vs padded | once per step: metadata"
          f" {statistics.median(metadata) * 1e3:.1f} ms, plan {statistics.median(plan) * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16,float32")
    parser.add_argument("--only", default=",".join(SHAPES))
    parser.add_argument("--layout", default="shuffled,fresh", help="KV block ids: shuffled, fresh (ascending)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"median CPU time of {args.repeat} calls per layer")
    for dtype_name in args.dtype.split(","):
        for layout in args.layout.split(","):
            for name in args.only.split(","):
                bench_shape(name, getattr(torch, dtype_name), layout, args.repeat)


if __name__ == "__main__":
    main()
