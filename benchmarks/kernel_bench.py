"""GPU benchmark of the Triton shared-prefix attention kernel: `python -m benchmarks.kernel_bench [--quick]`.

For a prefix of P tokens shared by D requests (P x D over 1k/4k/16k x 1/16/64), one attention layer
of a decode step (each request: 1 new token over a 32-token private tail) and of a prefill step
(each request: a 128-token chunk) is timed four ways, in the same process:
  - `shared`: the kernel with the prefix as one shared segment (its KV read once per tile of rows);
  - `no-share`: the same kernel with every request's prefix copied into its own private blocks;
  - `sdpa`: torch's scaled_dot_product_attention over KV already gathered into dense [D, L] tensors
    (the gather is not timed; GQA through `enable_gqa`, heads repeated only where that fails);
  - `flex`: torch's FlexAttention (compiled) over the prefix and every request's tail laid end to end,
    its block mask letting each request see the prefix and its own tail causally (mask and layout
    not timed), so the prefix is read once per block of queries, as in `shared`.
Invariant: every method computes the same attention; the `max|diff|` columns compare `shared` and
`flex` with `sdpa` on each case, so a fast wrong kernel cannot hide. CUDA only; ~1-2 minutes
(benchmarks.gpu_check runs the same cases off CUDA on tiny shapes, to test its plumbing).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class Setup:
    """The attention layer and step sizes every case shares (default: Llama-3-8B's attention)."""

    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    block: int = 16
    decode_tail: int = 32  # a decoding request's private tokens before its step
    prefill_chunk: int = 128  # a prefilling request's tokens in its step


@dataclass(frozen=True, slots=True)
class Case:
    phase: str  # decode | prefill
    prefix: int  # shared tokens, a multiple of the block size
    degree: int  # requests under the prefix
    q_len: int  # each request's tokens in the step
    history: int  # each request's private tokens before the step


@dataclass(frozen=True, slots=True)
class Row:
    case: Case
    shared_us: float
    private_us: float
    sdpa_us: float
    flex_us: float | None  # None when FlexAttention failed (flex_note says why)
    plan_ms: float  # host tile planning, once per step
    max_diff: float  # shared vs sdpa
    flex_diff: float | None
    sdpa_note: str
    flex_note: str = ""


def cases(setup: Setup, prefixes: tuple[int, ...], degrees: tuple[int, ...]) -> list[Case]:
    return [Case(phase, prefix, degree, 1 if phase == "decode" else setup.prefill_chunk,
                 setup.decode_tail if phase == "decode" else 0)
            for phase in ("decode", "prefill") for prefix in prefixes for degree in degrees]


def _blocks(n_tokens: int, block: int, next_block: list[int]) -> tuple[int, ...]:
    n = -(-n_tokens // block)
    next_block[0] += n
    return tuple(range(next_block[0] - n, next_block[0]))


def _steps(case: Case, block: int):
    """(shared StepBatch, no-share StepBatch, total blocks)."""
    from batchcli.engine.step import SegmentView, SeqChunk, SeqOwner, StepBatch

    nxt = [0]
    seg = SegmentView(0, case.prefix, _blocks(case.prefix, block, nxt))
    own = case.history + case.q_len
    tokens = tuple(range(case.q_len))
    shared = [SeqChunk(SeqOwner(i), tokens, case.prefix + case.history, case.prefix, _blocks(own, block, nxt), (0,), True)
              for i in range(case.degree)]
    private = [SeqChunk(SeqOwner(i), tokens, case.prefix + case.history, 0, _blocks(case.prefix + own, block, nxt), (), True)
               for i in range(case.degree)]
    return StepBatch(tuple(shared), {0: seg}), StepBatch(tuple(private), {}), nxt[0]


def _fill_private_copies(k_cache: torch.Tensor, shared_step, private_step, case: Case, block: int) -> None:
    """Make the no-share layout hold the same KV: the prefix copied, then the request's own tail."""
    seg_blocks = torch.tensor(shared_step.segments[0].block_ids, device=k_cache.device)
    n_pre = case.prefix // block
    for s, p in zip(shared_step.chunks, private_step.chunks):
        dst = torch.tensor(p.block_ids, device=k_cache.device)
        k_cache[dst[:n_pre]] = k_cache[seg_blocks]
        # the private tail starts at a block boundary in both layouts (the prefix is whole blocks)
        k_cache[dst[n_pre:]] = k_cache[torch.tensor(s.block_ids, device=k_cache.device)]


def _tokens(cache: torch.Tensor, blocks: tuple[int, ...], length: int) -> torch.Tensor:
    """Tokens 0..length-1 of a block list: [length, n_kv, d]."""
    return cache[torch.tensor(blocks, device=cache.device)].flatten(0, 1)[:length]


def _dense_kv(cache: torch.Tensor, step, case: Case) -> torch.Tensor:
    """[D, n_kv, L, d] gathered from the no-share layout's private blocks."""
    length = case.prefix + case.history + case.q_len
    return torch.stack([_tokens(cache, c.block_ids, length) for c in step.chunks]).transpose(1, 2).contiguous()


def _sdpa_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, setup: Setup, scale: float):
    """A closure running SDPA for the case, and how GQA was handled."""
    from torch.nn.attention.bias import causal_lower_right

    qd = q.view(case.degree, case.q_len, setup.heads, setup.head_dim).transpose(1, 2)  # [D, H, Lq, d]
    mask = None if case.q_len == 1 else causal_lower_right(case.q_len, k.shape[2])
    try:
        F.scaled_dot_product_attention(qd, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        return (lambda: F.scaled_dot_product_attention(qd, k, v, attn_mask=mask, scale=scale, enable_gqa=True)), "gqa"
    except RuntimeError:
        group = setup.heads // setup.kv_heads
        kr, vr = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [D, H, L, d]
        return (lambda: F.scaled_dot_product_attention(qd, kr, vr, attn_mask=mask, scale=scale)), "heads repeated"


@functools.cache
def _flex_attention(compiled: bool):
    """flex_attention, compiled on CUDA (eager it materialises every score). Each case's shapes and mask
    compile anew, so the recompile limit (8) is raised past the 18 cases, which would fall back to eager."""
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(flex_attention, dynamic=False)


def _flex_fn(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, step, case: Case, scale: float):
    """A closure running FlexAttention over [prefix | tail 0 | tail 1 | ...] with the sharing as a block mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    own, prefix, q_len, history = case.history + case.q_len, case.prefix, case.q_len, case.history
    seg = step.segments[0].block_ids

    def flat(cache: torch.Tensor) -> torch.Tensor:  # [1, n_kv, P + D * own, d]
        parts = [_tokens(cache, seg, prefix)] + [_tokens(cache, c.block_ids, own) for c in step.chunks]
        return torch.cat(parts).transpose(0, 1).unsqueeze(0).contiguous()

    def visible(b, h, q_idx, kv_idx):  # query row i of request r sees the prefix and its tail up to itself
        start = prefix + (q_idx // q_len) * own
        return (kv_idx < prefix) | ((kv_idx >= start) & (kv_idx - start <= history + q_idx % q_len))

    k, v = flat(k_cache), flat(v_cache)
    qf = q.transpose(0, 1).unsqueeze(0).contiguous()  # [1, H, T, d]
    mask = create_block_mask(visible, B=None, H=None, Q_LEN=q.shape[0], KV_LEN=k.shape[2], device=q.device)
    flex = _flex_attention(q.is_cuda)
    return lambda: flex(qf, k, v, block_mask=mask, scale=scale, enable_gqa=True)


def cuda_timer(fn: Callable[[], object]) -> float:
    """Milliseconds per call (triton's do_bench: warm-up, L2 flushed, median)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50)


def _layouts(case: Case, dtype: torch.dtype, device: torch.device, setup: Setup):
    """The case's steps, caches (both layouts hold the same KV) and queries; seeded, so every pass sees the same."""
    gen = torch.Generator(device=device).manual_seed(0)
    bs = setup.block
    shared_step, private_step, num_blocks = _steps(case, bs)
    shape = (num_blocks, bs, setup.kv_heads, setup.head_dim)
    k_cache = torch.randn(shape, device=device, dtype=dtype, generator=gen)  # [N, bs, n_kv, d]
    v_cache = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    _fill_private_copies(k_cache, shared_step, private_step, case, bs)
    _fill_private_copies(v_cache, shared_step, private_step, case, bs)
    rows = case.degree * case.q_len
    q = torch.randn(rows, setup.heads, setup.head_dim, device=device, dtype=dtype, generator=gen)  # [T, H, d]
    return shared_step, private_step, k_cache, v_cache, q


def run_case(case: Case, dtype: torch.dtype, device: torch.device, setup: Setup = Setup(),
             timer: Callable[[Callable[[], object]], float] = cuda_timer) -> Row:
    """`shared`, `no-share` and `sdpa` for one case (FlexAttention: `flex_case`, a pass of its own)."""
    from batchcli.engine.attention.backend import AttnShape
    from batchcli.engine.attention.metadata import build_metadata
    from batchcli.kernels.shared_prefix_attention import TritonAttention, default_config
    from batchcli.kernels.tiles import plan_tiles

    shared_step, private_step, k_cache, v_cache, q = _layouts(case, dtype, device, setup)
    meta_s, meta_p = build_metadata(shared_step, setup.block, device), build_metadata(private_step, setup.block, device)
    scale = setup.head_dim**-0.5
    shape = AttnShape(setup.heads, setup.kv_heads, dtype, setup.head_dim)
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
    t0 = time.perf_counter()
    plan_tiles(meta_s.host, setup.kv_heads, default_config(shape, setup.block, sm_count))
    plan_ms = (time.perf_counter() - t0) * 1e3
    backend = TritonAttention(shape)
    plan_s, plan_p = backend.plan(meta_s), backend.plan(meta_p)
    shared_ms = timer(lambda: backend.run(q, k_cache, v_cache, plan_s, scale))
    private_ms = timer(lambda: backend.run(q, k_cache, v_cache, plan_p, scale))
    sdpa, note = _sdpa_fn(q, _dense_kv(k_cache, private_step, case), _dense_kv(v_cache, private_step, case), case,
                          setup, scale)
    sdpa_ms = timer(sdpa)
    ref = sdpa().transpose(1, 2).reshape(q.shape).float()  # [T, H, d]
    diff = (backend.run(q, k_cache, v_cache, plan_s, scale).float() - ref).abs().max().item()
    return Row(case, shared_ms * 1e3, private_ms * 1e3, sdpa_ms * 1e3, None, plan_ms, diff, None, note, "not run")


def flex_case(row: Row, dtype: torch.dtype, device: torch.device, setup: Setup = Setup(),
              timer: Callable[[Callable[[], object]], float] = cuda_timer) -> Row:
    """The row with FlexAttention's time and its difference from SDPA, or why it failed."""
    case = row.case
    shared_step, private_step, k_cache, v_cache, q = _layouts(case, dtype, device, setup)
    scale = setup.head_dim**-0.5
    try:
        sdpa, _ = _sdpa_fn(q, _dense_kv(k_cache, private_step, case), _dense_kv(v_cache, private_step, case), case,
                           setup, scale)
        ref = sdpa().transpose(1, 2).reshape(q.shape).float()  # [T, H, d]
        del sdpa
        flex = _flex_fn(q, k_cache, v_cache, shared_step, case, scale)
        diff = (flex()[0].transpose(0, 1).float() - ref).abs().max().item()
        return replace(row, flex_us=timer(flex) * 1e3, flex_diff=diff, flex_note="")
    except Exception as exc:  # an unsupported torch or shape: the other columns still stand
        return replace(row, flex_note=f"{type(exc).__name__}: {str(exc)[:200]}")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def table(rows: list[Row]) -> list[str]:
    """The rows as a markdown table."""
    lines = ["| phase | prefix | degree | rows | shared us | no-share us | sdpa us | flex us | x no-share | x sdpa | x flex "
             "| plan ms | max abs diff (flex) | notes |", "|" + " --- |" * 14]
    for r in rows:
        c = r.case
        flex = f"{r.flex_us:.1f}" if r.flex_us is not None else "-"
        fdiff = f" ({r.flex_diff:.1e})" if r.flex_diff is not None else ""
        lines.append(f"| {c.phase} | {c.prefix} | {c.degree} | {c.degree * c.q_len} | {r.shared_us:.1f} | "
                     f"{r.private_us:.1f} | {r.sdpa_us:.1f} | {flex} | {_ratio(r.private_us, r.shared_us)} | "
                     f"{_ratio(r.sdpa_us, r.shared_us)} | {_ratio(r.flex_us, r.shared_us)} | {r.plan_ms:.2f} | "
                     f"{r.max_diff:.1e}{fdiff} | sdpa {r.sdpa_note}{'; flex ' + r.flex_note if r.flex_note else ''} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prefix 1k and 4k only, degrees 1 and 16")
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernel_bench needs a CUDA GPU (the Triton kernel is only timed there); none found.", file=sys.stderr)
        return 1
    dtype, setup = getattr(torch, args.dtype), Setup()
    prefixes, degrees = ((1024, 4096), (1, 16)) if args.quick else ((1024, 4096, 16384), (1, 16, 64))
    print(f"shared-prefix attention, one layer: {setup}, {args.dtype}, {torch.cuda.get_device_name()}")
    rows, device = [], torch.device("cuda")
    for case in cases(setup, prefixes, degrees):
        rows.append(flex_case(run_case(case, dtype, device, setup), dtype, device, setup))
        print(table(rows)[-1], flush=True)
        torch.cuda.empty_cache()
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
