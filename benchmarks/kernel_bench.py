"""GPU benchmark of the Triton shared-prefix attention kernel: `python -m benchmarks.kernel_bench [--quick]`.

For a prefix of P tokens shared by D requests (P x D over 1k/4k/16k x 1/16/64), one attention layer
of a decode step (each request: 1 new token over a 32-token private tail) and of a prefill step
(each request: a 128-token chunk) is timed three ways, in the same process:
  - `shared`: the kernel with the prefix as one shared segment (its KV read once per tile of rows);
  - `no-share`: the same kernel with every request's prefix copied into its own private blocks;
  - `sdpa`: torch's scaled_dot_product_attention over KV already gathered into dense [D, L] tensors
    (the gather is not timed; GQA through `enable_gqa`, heads repeated only where that fails).
Invariant: every method computes the same attention; the table's `max|diff|` column compares
`shared` with `sdpa` on each case, so a fast wrong kernel cannot hide. CUDA only; ~1-2 minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16  # Llama-3-8B-like attention
DECODE_TAIL, PREFILL_CHUNK = 32, 128


@dataclass(frozen=True, slots=True)
class Case:
    phase: str  # decode | prefill
    prefix: int  # shared tokens, a multiple of BLOCK
    degree: int  # requests under the prefix

    @property
    def q_len(self) -> int:
        return 1 if self.phase == "decode" else PREFILL_CHUNK

    @property
    def history(self) -> int:  # private tokens before this step
        return DECODE_TAIL if self.phase == "decode" else 0


@dataclass(frozen=True, slots=True)
class Row:
    case: Case
    shared_us: float
    private_us: float
    sdpa_us: float
    plan_ms: float  # host tile planning, once per step
    max_diff: float
    sdpa_note: str


def _blocks(n_tokens: int, next_block: list[int]) -> tuple[int, ...]:
    n = -(-n_tokens // BLOCK)
    next_block[0] += n
    return tuple(range(next_block[0] - n, next_block[0]))


def _steps(case: Case):
    """(shared StepBatch, no-share StepBatch, total blocks, per-request prefix block lists)."""
    from batchcli.engine.step import SegmentView, SeqChunk, SeqOwner, StepBatch

    nxt = [0]
    seg = SegmentView(0, case.prefix, _blocks(case.prefix, nxt))
    own = case.history + case.q_len
    tokens = tuple(range(case.q_len))
    shared = [SeqChunk(SeqOwner(i), tokens, case.prefix + case.history, case.prefix, _blocks(own, nxt), (0,), True)
              for i in range(case.degree)]
    private = [SeqChunk(SeqOwner(i), tokens, case.prefix + case.history, 0, _blocks(case.prefix + own, nxt), (), True)
               for i in range(case.degree)]
    return StepBatch(tuple(shared), {0: seg}), StepBatch(tuple(private), {}), nxt[0]


def _fill_private_copies(k_cache: torch.Tensor, shared_step, private_step, case: Case) -> None:
    """Make the no-share layout hold the same KV: the prefix copied, then the request's own tail."""
    seg_blocks = torch.tensor(shared_step.segments[0].block_ids, device=k_cache.device)
    n_pre = case.prefix // BLOCK
    for s, p in zip(shared_step.chunks, private_step.chunks):
        dst = torch.tensor(p.block_ids, device=k_cache.device)
        k_cache[dst[:n_pre]] = k_cache[seg_blocks]
        # the private tail starts at a block boundary in both layouts (the prefix is whole blocks)
        k_cache[dst[n_pre:]] = k_cache[torch.tensor(s.block_ids, device=k_cache.device)]


def _dense_kv(cache: torch.Tensor, step, case: Case) -> torch.Tensor:
    """[D, n_kv, L, d] gathered from the no-share layout's private blocks."""
    length = case.prefix + case.history + case.q_len
    rows = [cache[torch.tensor(c.block_ids, device=cache.device)].flatten(0, 1)[:length] for c in step.chunks]  # [L, n_kv, d] each
    return torch.stack(rows).transpose(1, 2).contiguous()  # [D, n_kv, L, d]


def _sdpa_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, scale: float):
    """A closure running SDPA for the case, and how GQA was handled."""
    from torch.nn.attention.bias import causal_lower_right

    qd = q.view(case.degree, case.q_len, HEADS, HEAD_DIM).transpose(1, 2)  # [D, H, Lq, d]
    mask = None if case.q_len == 1 else causal_lower_right(case.q_len, k.shape[2])
    try:
        F.scaled_dot_product_attention(qd, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        return (lambda: F.scaled_dot_product_attention(qd, k, v, attn_mask=mask, scale=scale, enable_gqa=True)), "gqa"
    except RuntimeError:
        kr = k.repeat_interleave(HEADS // KV_HEADS, dim=1)  # [D, H, L, d]
        vr = v.repeat_interleave(HEADS // KV_HEADS, dim=1)  # [D, H, L, d]
        return (lambda: F.scaled_dot_product_attention(qd, kr, vr, attn_mask=mask, scale=scale)), "heads repeated"


def run_case(case: Case, dtype: torch.dtype) -> Row:
    from triton.testing import do_bench

    from batchcli.engine.attention.metadata import build_metadata
    from batchcli.engine.attention.backend import AttnShape
    from batchcli.kernels.shared_prefix_attention import TritonAttention, default_config
    from batchcli.kernels.tiles import plan_tiles

    dev = torch.device("cuda")
    shared_step, private_step, num_blocks = _steps(case)
    k_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, device=dev, dtype=dtype)  # [N, bs, n_kv, d]
    v_cache = torch.randn_like(k_cache)
    _fill_private_copies(k_cache, shared_step, private_step, case)
    _fill_private_copies(v_cache, shared_step, private_step, case)
    meta_s = build_metadata(shared_step, BLOCK, dev)
    meta_p = build_metadata(private_step, BLOCK, dev)
    q = torch.randn(meta_s.num_tokens, HEADS, HEAD_DIM, device=dev, dtype=dtype)  # [T, H, d]
    scale = HEAD_DIM**-0.5

    t0 = time.perf_counter()
    shape = AttnShape(HEADS, KV_HEADS, dtype, HEAD_DIM)
    plan_tiles(meta_s.host, KV_HEADS, default_config(shape, BLOCK, torch.cuda.get_device_properties(dev).multi_processor_count))
    plan_ms = (time.perf_counter() - t0) * 1e3
    backend = TritonAttention(shape)
    plan_s, plan_p = backend.plan(meta_s), backend.plan(meta_p)
    shared_ms = do_bench(lambda: backend.run(q, k_cache, v_cache, plan_s, scale), warmup=10, rep=50)
    private_ms = do_bench(lambda: backend.run(q, k_cache, v_cache, plan_p, scale), warmup=10, rep=50)
    k_dense, v_dense = _dense_kv(k_cache, private_step, case), _dense_kv(v_cache, private_step, case)
    sdpa, note = _sdpa_fn(q, k_dense, v_dense, case, scale)
    sdpa_ms = do_bench(sdpa, warmup=10, rep=50)
    ref = sdpa().transpose(1, 2).reshape(q.shape)  # [T, H, d]
    diff = (backend.run(q, k_cache, v_cache, plan_s, scale).float() - ref.float()).abs().max().item()
    return Row(case, shared_ms * 1e3, private_ms * 1e3, sdpa_ms * 1e3, plan_ms, diff, note)


def print_table(rows: list[Row], dtype: torch.dtype) -> None:
    name = torch.cuda.get_device_name()
    print(f"\nshared-prefix attention, one layer: H={HEADS}, n_kv={KV_HEADS}, d={HEAD_DIM}, block={BLOCK}, "
          f"{str(dtype).removeprefix('torch.')}, {name}")
    head = f"{'phase':8}{'prefix':>7}{'degree':>7}{'rows':>7}{'shared us':>11}{'no-share us':>13}{'sdpa us':>10}" \
           f"{'x no-share':>11}{'x sdpa':>8}{'plan ms':>9}{'max|diff|':>11}  sdpa"
    print(head)
    print("-" * len(head))
    for r in rows:
        c = r.case
        print(f"{c.phase:8}{c.prefix:>7}{c.degree:>7}{c.degree * c.q_len:>7}{r.shared_us:>11.1f}{r.private_us:>13.1f}"
              f"{r.sdpa_us:>10.1f}{r.private_us / r.shared_us:>11.2f}{r.sdpa_us / r.shared_us:>8.2f}"
              f"{r.plan_ms:>9.2f}{r.max_diff:>11.2e}  {r.sdpa_note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="prefix 1k and 4k only, degrees 1 and 16")
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernel_bench needs a CUDA GPU (the Triton kernel is only timed there); none found.", file=sys.stderr)
        return 1
    dtype = getattr(torch, args.dtype)
    prefixes, degrees = ((1024, 4096), (1, 16)) if args.quick else ((1024, 4096, 16384), (1, 16, 64))
    rows = []
    for phase in ("decode", "prefill"):
        for prefix in prefixes:
            for degree in degrees:
                rows.append(run_case(Case(phase, prefix, degree), dtype))
                torch.cuda.empty_cache()
    print_table(rows, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
