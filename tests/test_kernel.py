"""The Triton shared-prefix attention kernel against the float32 reference.

Without CUDA the kernel runs under Triton's CPU interpreter (TRITON_INTERPRET=1, set here before
Triton is imported), so shapes stay small. With CUDA the same cases run on the GPU, plus the
`cuda`-marked larger ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1: nothing can run Triton", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

from batchcli.engine.attention.backend import AttnShape  # noqa: E402
from batchcli.engine.attention.metadata import AttnMetadata, build_metadata  # noqa: E402
from batchcli.engine.attention.reference import reference_attention  # noqa: E402
from batchcli.engine.model import CausalLM, allocate_kv  # noqa: E402
from batchcli.engine.step import SegmentView, SegOwner, SeqChunk, SeqOwner, StepBatch  # noqa: E402
from batchcli.engine.weights import load_model  # noqa: E402
from batchcli.kernels.shared_prefix_attention import TritonAttention  # noqa: E402
from batchcli.kernels.tiles import TileConfig, plan_tiles  # noqa: E402
from helpers_attention import Chunk, attend, make_step  # noqa: E402
from helpers_models import save_tiny_checkpoint  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}  # atol = rtol, per dtype


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Shapes here are tiny: a second intra-op thread only spins, and on a busy machine it costs 2x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Case:
    seg_blocks: tuple[int, ...]  # blocks per segment id
    chunks: tuple[Chunk, ...]


def case_step(case: Case, block_size: int) -> tuple[StepBatch, int]:
    return make_step(dict(enumerate(case.seg_blocks)), case.chunks, block_size)


def run_case(case: Case, dtype: torch.dtype, group: int = 4, n_kv: int = 1, head_dim: int = 64,
             block_size: int = 16, config: TileConfig | None = None) -> None:
    step, num_blocks = case_step(case, block_size)
    meta = build_metadata(step, block_size, DEVICE)
    gen = torch.Generator().manual_seed(1)
    q = (2 * torch.randn(meta.num_tokens, group * n_kv, head_dim, generator=gen)).to(DEVICE, dtype)  # [T, H, d]
    k_cache = torch.randn(num_blocks, block_size, n_kv, head_dim, generator=gen).to(DEVICE, dtype)
    v_cache = torch.randn(num_blocks, block_size, n_kv, head_dim, generator=gen).to(DEVICE, dtype)
    scale = head_dim**-0.5
    out = attend(TritonAttention(AttnShape(group * n_kv, n_kv, dtype, head_dim), config), q, k_cache, v_cache, meta, scale)
    assert out.dtype == dtype and out.shape == q.shape
    ref = reference_attention(q.cpu(), k_cache.cpu(), v_cache.cpu(), meta, scale)  # [T, H, d] float32
    torch.testing.assert_close(out.float().cpu(), ref, atol=TOL[dtype], rtol=TOL[dtype])


# offsets not multiple of the block size everywhere: history 5, 17, 20, 3; q_len 7, 18
DECODE = Case((2, 1), (Chunk((0, 1), 5, 1), Chunk((0,), 20, 1), Chunk((0, 1), 17, 1), Chunk((0, 1), 0, 1)))
PREFILL = Case((2, 1), (Chunk((0, 1), 0, 7), Chunk((0,), 5, 18), Chunk((), 3, 11)))
MIXED = Case((2, 1), (Chunk((0, 1), 5, 1), Chunk((0,), 0, 18), Chunk((), 9, 1), Chunk((0, 1), 12, 6), Chunk((0, 1), 30, 1)))
ONE_MEMBER = Case((1, 2), (Chunk((0,), 4, 3), Chunk((0, 1), 2, 1)))  # segment 1 has one member
NO_SEGMENTS = Case((), (Chunk((), 0, 9), Chunk((), 21, 1), Chunk((), 6, 5)))
THREE_LEVELS = Case((1, 2, 1), (Chunk((0, 1, 2), 3, 1), Chunk((0, 1, 2), 0, 5), Chunk((0, 1), 7, 1), Chunk((0,), 1, 2)))
CASES = {"decode": DECODE, "prefill": PREFILL, "mixed": MIXED, "one_member": ONE_MEMBER,
         "no_segments": NO_SEGMENTS, "three_levels": THREE_LEVELS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_matches_reference(name: str, dtype: torch.dtype) -> None:
    run_case(CASES[name], dtype)


def test_float16_mixed_step() -> None:
    run_case(MIXED, torch.float16)


@pytest.mark.parametrize(("group", "n_kv"), [(1, 1), (3, 2), (4, 1), (8, 1), (16, 1)])
def test_gqa_ratios(group: int, n_kv: int) -> None:
    run_case(MIXED, torch.float32, group=group, n_kv=n_kv)


@pytest.mark.parametrize(("head_dim", "block_size"), [(64, 32), (128, 16), (128, 32)])
def test_head_dim_and_block_size(head_dim: int, block_size: int) -> None:
    run_case(MIXED, torch.bfloat16, n_kv=2, head_dim=head_dim, block_size=block_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_kv_ranges_merge_exactly(dtype: torch.dtype) -> None:
    # 16-token pieces: segments and private KV are cut, so rows merge several partials; the prefill
    # rows at private positions 13..15 see nothing of their tile's second piece (16..16): empty partials
    case = Case((3, 2), (Chunk((0, 1), 37, 1), Chunk((0,), 9, 10), Chunk((), 40, 1)))
    run_case(case, dtype, group=3, n_kv=2, config=TileConfig(block_m=4, block_n=16, min_split_tokens=16, target_programs=1000))


FP32_SHAPE = AttnShape(num_heads=4, num_kv_heads=2, dtype=torch.float32, head_dim=64)


def _step_meta(case: Case = MIXED, block_size: int = 16) -> tuple[AttnMetadata, int]:
    step, num_blocks = case_step(case, block_size)
    return build_metadata(step, block_size, DEVICE), num_blocks


def test_tile_plan_covers_each_row_once_per_source() -> None:
    meta, _ = _step_meta()
    cfg = TileConfig(block_m=4, block_n=16, min_split_tokens=16, target_programs=1000)
    plan = plan_tiles(meta.host, 2, cfg)
    h = meta.host
    seen = np.zeros(meta.num_tokens, dtype=np.int64)  # KV tokens each row gets from all its tiles
    for t in range(plan.num_tiles):
        for row, limit in zip(plan.ent_row[t], plan.ent_limit[t]):
            if row >= 0:
                seen[row] += max(0, min(limit, plan.kv_hi[t]) - plan.kv_lo[t])
    seg_tokens = np.zeros(meta.num_tokens, dtype=np.int64)
    for g in range(len(h.seg_len)):
        seg_tokens[h.seg_q_rows[h.seg_q_start[g] : h.seg_q_start[g + 1]]] += h.seg_len[g]
    chunk = np.repeat(np.arange(len(h.q_len)), h.q_len)
    private = h.ctx_len[chunk] - h.q_len[chunk] + np.arange(meta.num_tokens) - h.q_start[chunk] + 1
    np.testing.assert_array_equal(seen, seg_tokens + private)
    direct = set(plan.ent_row[plan.ent_dst < 0].tolist()) - {-1}
    assert direct.isdisjoint(plan.merge_rows.tolist()) and len(direct) + len(plan.merge_rows) == meta.num_tokens


@pytest.mark.parametrize(("target", "min_split", "pieces"), [(0, 128, 1), (8, 512, 2), (64, 128, 8)])
def test_long_segment_under_few_rows_is_cut_to_fill_the_gpu(target: int, min_split: int, pieces: int) -> None:
    # 1024 + 4 x 4 KV tokens of work under 4 decodes: 8 programs would take ~130 each, floored to
    # 512 -> 2 pieces; 64 programs floor at 128 -> 8 pieces; no target -> never cut
    meta, _ = _step_meta(Case((64,), tuple(Chunk((0,), 3, 1) for _ in range(4))))
    cfg = TileConfig(block_m=16, block_n=64, min_split_tokens=min_split, target_programs=target)
    plan = plan_tiles(meta.host, 1, cfg)
    shared = plan.blk_off < meta.host.seg_block_table.size  # [NT]
    assert int(shared.sum()) == pieces and int(plan.kv_hi[shared].max()) == 1024


def test_one_plan_serves_every_layer() -> None:
    """The tile plan is made once per step; layers with other numbers reuse it and stay exact."""
    meta, num_blocks = _step_meta()
    backend = TritonAttention(FP32_SHAPE)
    plan = backend.plan(meta)
    for layer in range(2):
        gen = torch.Generator().manual_seed(layer)
        q = torch.randn(meta.num_tokens, 4, 64, generator=gen).to(DEVICE)
        cache = torch.randn(num_blocks, 16, 2, 64, generator=gen).to(DEVICE)
        out = backend.run(q, cache, cache, plan, 0.125)
        ref = reference_attention(q.cpu(), cache.cpu(), cache.cpu(), meta, 0.125)
        torch.testing.assert_close(out.float().cpu(), ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])
    torch.testing.assert_close(backend.run(q, cache, cache, plan, 0.125), out, atol=0, rtol=0)


def _bad_inputs(meta: AttnMetadata, num_blocks: int) -> dict[str, tuple]:
    q = torch.randn(meta.num_tokens, 4, 64, device=DEVICE)
    c = torch.randn(num_blocks, 16, 2, 64, device=DEVICE)
    return {
        "q must be": (q[0], c, c, 0.1),
        "v_cache shape": (q, c, c[:, :, :1], 0.1),
        "k_cache dtype": (q, c.half(), c, 0.1),
        "q dtype": (q.double(), c.double(), c.double(), 0.1),
        "head_dim": (q[..., :32], c, c, 0.1),
        "q heads": (torch.randn(meta.num_tokens, 5, 64, device=DEVICE), c, c, 0.1),
        "block_size": (q, c.reshape(num_blocks * 2, 8, 2, 64), c.reshape(num_blocks * 2, 8, 2, 64), 0.1),
        "meta.num_tokens": (q[:-1], c, c, 0.1),
        "contiguous in head_dim": (q, c.transpose(1, 3).contiguous().transpose(1, 3), c, 0.1),
        "scale": (q, c, c, float("nan")),
        "caches hold": (q, c[:3], c[:3], 0.1),
    }


@pytest.mark.parametrize("message", list(_bad_inputs(*_step_meta())))
def test_launcher_rejects_bad_arguments(message: str) -> None:
    meta, num_blocks = _step_meta()
    q, k, v, scale = _bad_inputs(meta, num_blocks)[message]
    with pytest.raises(ValueError, match=message):
        attend(TritonAttention(FP32_SHAPE), q, k, v, meta, scale)


def test_launcher_rejects_bad_metadata() -> None:
    meta, num_blocks = _step_meta()
    meta = replace(meta, host=replace(meta.host, seg_q_rows=meta.host.seg_q_rows + meta.num_tokens))
    with pytest.raises(ValueError, match="seg_q_rows"):
        TritonAttention(FP32_SHAPE).plan(meta)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_long_prefix_on_cuda(dtype: torch.dtype) -> None:
    # 2k-token prefix under 40 decodes and two prefill chunks; the default config cuts KV ranges
    chunks = tuple(Chunk((0, 1), h, 1) for h in range(0, 200, 5)) + (Chunk((0,), 33, 300), Chunk((), 0, 257))
    run_case(Case((64, 64), chunks), dtype, group=8, n_kv=4, head_dim=128, block_size=16)


# a 1k-token prefix under decodes at odd private lengths, a prefill chunk under it and one alone
CUDA_STEP = Case((64,), tuple(Chunk((0,), h, 1) for h in range(0, 120, 5)) + (Chunk((0,), 7, 70), Chunk((), 0, 33)))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", range(1, 9))
def test_default_configs_on_cuda(dtype: torch.dtype, head_dim: int, group: int) -> None:
    """Each configuration default_config picks for these shapes (tests/test_triton_compile.py
    compiles the same ones) against the reference, KV ranges cut over the GPU's SMs; and no kernel
    compiled so far spills registers as this device's own Triton and driver report it."""
    run_case(CUDA_STEP, dtype, group=group, n_kv=2, head_dim=head_dim, block_size=16)
    assert not _spilling_kernels()


def _spilling_kernels() -> list[str]:
    from batchcli.kernels.tile_kernels import _merge_kernel, _tile_kernel

    bad = []
    for kernel in (_tile_kernel, _merge_kernel):
        for compiled in kernel.device_caches[torch.cuda.current_device()][0].values():
            if compiled.n_spills:
                bad.append(f"{kernel.__name__}, {compiled.metadata.num_warps} warps, constants {compiled.src.constants}: "
                           f"{compiled.n_spills} spilled, {compiled.n_regs} registers")
    return bad


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("group", [1, 3, 8])
def test_block_size_32_on_cuda(group: int) -> None:
    run_case(CUDA_STEP, torch.bfloat16, group=group, n_kv=2, head_dim=128, block_size=32)


def _greedy(model: CausalLM, new_tokens: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Three requests, two under a 16-token shared segment, generated greedily step by step."""
    bs = 8
    kv = allocate_kv(model.arch, model.dtype, 16, bs, DEVICE)
    segment = SegmentView(0, 16, (5, 2))
    prefix = tuple(range(3, 19))
    private = [[40, 41, 42, 43, 44], [50, 51, 52, 53, 54, 55, 56, 57, 58], [60, 61, 62]]
    under = [(0,), (0,), ()]
    blocks = [(9, 1), (12, 3), (7,)]
    done = [0, 0, 0]  # private tokens computed
    generated: list[list[int]] = [[], [], []]
    logits_seen = []
    # step 0 prefills the segment (its own job) and the unshared request; later steps everything else
    segment_job = [SeqChunk(SegOwner(0), prefix, 0, 0, segment.block_ids, (), False)]
    while min(len(g) for g in generated) < new_tokens:
        ready = [r for r in range(3) if not (segment_job and under[r])]
        chunks, segment_job = segment_job, []
        for r in ready:
            todo = tuple(private[r][done[r]:])
            shared = 16 * len(under[r])
            chunks.append(SeqChunk(SeqOwner(r), todo, shared + done[r], shared, blocks[r], under[r], True))
        meta = build_metadata(StepBatch(tuple(chunks), {0: segment}), bs, DEVICE)
        ids = torch.tensor([t for c in chunks for t in c.token_ids], device=DEVICE)  # [T]
        pos = torch.cat([torch.arange(c.start_pos, c.start_pos + len(c.token_ids)) for c in chunks]).to(DEVICE)  # [T]
        last = meta.q_start[1:].long() - 1  # [S]
        rows = last[torch.tensor([c.sample for c in chunks], device=DEVICE)]  # [N]
        logits = model(ids, pos, kv, meta, rows)  # [N, V]
        logits_seen.append(logits.cpu())
        for r, token in zip(ready, logits.argmax(-1).tolist()):
            done[r] = len(private[r])
            private[r].append(token)
            generated[r].append(token)
    return generated, logits_seen


def test_greedy_generation_through_triton_equals_torch_path(tmp_path: Path) -> None:
    save_tiny_checkpoint(tmp_path, kind="llama", seed=3)  # 4 query heads over 2 KV heads, head_dim 16
    runs = [_greedy(load_model(tmp_path, torch.float32, DEVICE, b), new_tokens=3) for b in ("torch", "triton")]
    (torch_tokens, torch_logits), (triton_tokens, triton_logits) = runs
    assert triton_tokens == torch_tokens
    for a, b in zip(triton_logits, torch_logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
