"""TorchAttention (the CPU shared-prefix backend) against the float32 reference, and build_metadata.

Steps are hand-made StepBatches over shuffled block ids, with random caches everywhere (so a wrong
slot, block or mask reads wrong numbers), built through build_metadata like the runner does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from batchcli.engine.attention.gather_backend import GatherAttention
from batchcli.engine.attention.metadata import AttnMetadata, build_metadata
from batchcli.engine.attention.reference import reference_attention
from batchcli.engine.attention import torch_backend
from batchcli.engine.attention.torch_backend import TorchAttention
from batchcli.engine.step import SegmentView, SeqChunk, SeqOwner, StepBatch
from helpers_attention import GQA, SCENARIOS, assert_near, attend, random_inputs, scenario_step


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Test shapes are tiny: on a shared machine, extra threads only add barrier waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check(scenario: str, dtype: torch.dtype, n_kv: int, group: int, block_size: int = 16, d: int = 32,
          q_gain: float = 1.0, loosen: float = 1.0, shuffle: bool = True) -> AttnMetadata:
    step, num_blocks = scenario_step(scenario, block_size, shuffle=shuffle)
    meta = build_metadata(step, block_size)
    q, k_cache, v_cache = random_inputs(step, num_blocks, block_size, n_kv, group, d, dtype)
    q = q * q_gain
    scale = 1 / math.sqrt(d)
    out = attend(TorchAttention(dtype), q, k_cache, v_cache, meta, scale)
    assert out.dtype == dtype and out.shape == q.shape
    expected = reference_attention(q, k_cache, v_cache, meta, scale)
    assert_near(out, expected, dtype, loosen)
    return meta


@pytest.mark.parametrize("n_kv,group", GQA)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_matches_reference(scenario: str, dtype: torch.dtype, n_kv: int, group: int) -> None:
    check(scenario, dtype, n_kv, group)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_small_blocks_and_head_dim_64(scenario: str) -> None:
    check(scenario, torch.float32, n_kv=3, group=3, block_size=4, d=64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_blocks_in_order_are_read_in_place(dtype: torch.dtype) -> None:
    """Ascending block ids: both buckets (segment, own tokens) read the cache through a view."""
    meta = check("one_prefill", dtype, n_kv=2, group=3, block_size=4, shuffle=False)
    buckets = TorchAttention(dtype).plan(meta).buckets
    assert len(buckets) == 2 and all(b.kv_view is not None for b in buckets)


def test_large_logits_merge_without_overflow() -> None:
    """Scores in the hundreds: a merge that exponentiated raw log-sum-exps would overflow float32.
    Rounding of scores that large moves the softmax (of the reference too), hence 10x the tolerance."""
    check("nested", torch.float32, n_kv=2, group=3, q_gain=60.0, loosen=10.0)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_matmul_kernel_matches_reference(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel other devices use, forced on CPU."""
    monkeypatch.setattr(torch_backend, "_KERNELS", {})
    check(scenario, torch.float32, n_kv=2, group=3)
    check(scenario, torch.bfloat16, n_kv=2, group=4)


def test_one_plan_serves_every_layer() -> None:
    """The plan is made once per step; layers with other numbers reuse it and stay exact."""
    step, num_blocks = scenario_step("mixed", 16)
    meta = build_metadata(step, 16)
    backend = TorchAttention(torch.float32)
    plan = backend.plan(meta)
    for layer in range(3):
        q, k_cache, v_cache = random_inputs(step, num_blocks, 16, 2, 3, 32, torch.float32, seed=layer)
        out = backend.run(q, k_cache, v_cache, plan, 0.2)
        assert_near(out, reference_attention(q, k_cache, v_cache, meta, 0.2), torch.float32)


def test_segment_queries_are_stacked_and_each_segment_read_once() -> None:
    """16 segments of 1,024 tokens x 8 decodes: one call holds all 16 segments, 8 stacked rows each,
    each segment's KV once; the 128 private tails take one more call."""
    bs, seg_blocks = 16, 64
    segments = {
        g: SegmentView(g, seg_blocks * bs, tuple(range(g * seg_blocks, (g + 1) * seg_blocks))) for g in range(16)
    }
    chunks = []
    for i in range(128):
        g, tail = i // 8, 9 + i % 5
        blocks = (1024 + 2 * i, 1025 + 2 * i)
        chunks.append(SeqChunk(SeqOwner(i), (1,), seg_blocks * bs + tail - 1, seg_blocks * bs, blocks, (g,), True))
    step = StepBatch(tuple(chunks), segments)
    meta = build_metadata(step, bs)
    q, k_cache, v_cache = random_inputs(step, 1024 + 256, bs, 3, 3, 16, torch.float32)
    backend = TorchAttention(torch.float32)
    plan = backend.plan(meta)
    out = backend.run(q, k_cache, v_cache, plan, 0.25)
    assert_near(out, reference_attention(q, k_cache, v_cache, meta, 0.25), torch.float32)

    buckets = plan.buckets
    seg_bucket = [b for b in buckets if tuple(b.q_index.shape) == (16, 8)]
    assert len(seg_bucket) == 1, [tuple(b.q_index.shape) for b in buckets]
    seg_slots = seg_bucket[0].kv_slots.flatten().sort().values
    assert torch.equal(seg_slots, torch.arange(16 * seg_blocks * bs))  # every segment slot, once
    assert seg_bucket[0].kv_view == (0, seg_blocks * bs)  # evenly spaced: read in place
    assert len(buckets) == 2


def test_empty_step() -> None:
    meta = build_metadata(StepBatch((), {}), 16)
    q = torch.zeros(0, 6, 32)
    cache = torch.zeros(2, 16, 2, 32)
    assert attend(TorchAttention(torch.float32), q, cache, cache, meta, 0.1).shape == (0, 6, 32)


@pytest.mark.parametrize(
    "q_shape,k_shape,k_dtype,match",
    [
        ((3, 5, 32), (4, 16, 2, 32), torch.float32, "heads"),  # 5 heads, 2 KV heads
        ((4, 6, 32), (4, 16, 2, 32), torch.float32, "rows"),  # the step has 3 rows
        ((3, 6, 32), (4, 8, 2, 32), torch.float32, "block size"),
        ((3, 6, 32), (4, 16, 2, 32), torch.bfloat16, "dtypes"),
    ],
)
def test_rejects_mismatched_inputs(q_shape: tuple[int, ...], k_shape: tuple[int, ...], k_dtype: torch.dtype,
                                   match: str) -> None:
    step = StepBatch((SeqChunk(SeqOwner(0), (1, 2, 3), 0, 0, (1,), (), True),), {})
    meta = build_metadata(step, 16)
    cache = torch.zeros(k_shape, dtype=k_dtype)
    with pytest.raises(ValueError, match=match):
        attend(TorchAttention(torch.float32), torch.zeros(q_shape), cache, cache, meta, 0.1)


def test_query_slice_of_a_fused_projection() -> None:
    """q as the runner may pass it: a non-contiguous slice of a fused [T, (H + 2 n_kv) * d] output."""
    step, num_blocks = scenario_step("mixed", 16)
    meta = build_metadata(step, 16)
    q, k_cache, v_cache = random_inputs(step, num_blocks, 16, 2, 3, 32, torch.float32)
    fused = torch.cat([q, torch.zeros(q.shape[0], 4, 32)], dim=1)  # [T, H + 2 n_kv, d]
    out = attend(TorchAttention(torch.float32), fused[:, :6], k_cache, v_cache, meta, 0.2)
    assert_near(out, reference_attention(q, k_cache, v_cache, meta, 0.2), torch.float32)


def test_slot_mapping_by_hand() -> None:
    """bs 4; one 2-block segment; private blocks (7, 2); history 5, 2 new tokens -> positions 5, 6."""
    segment = SegmentView(0, 8, (3, 5))
    step = StepBatch(
        (SeqChunk(SeqOwner(0), (11, 12), 8 + 5, 8, (7, 2), (0,), True),  # block 2, offsets 1 and 2
         SeqChunk(SeqOwner(1), (13,), 8 + 3, 8, (4,), (0,), True),  # block 4, offset 3
         SeqChunk(SeqOwner(2), (14, 15, 16), 0, 0, (6,), (), True)),  # block 6, offsets 0..2
        {0: segment},
    )
    meta = build_metadata(step, 4)
    assert meta.slot_mapping.tolist() == [9, 10, 19, 24, 25, 26]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("block_size", [4, 16])
def test_slot_mapping_matches_blocks(scenario: str, block_size: int) -> None:
    step, _ = scenario_step(scenario, block_size, seed=3)
    meta = build_metadata(step, block_size)
    expected = []
    for c in step.chunks:
        for pos in range(c.start_pos - c.private_start, c.private_len):
            expected.append(c.block_ids[pos // block_size] * block_size + pos % block_size)
    assert meta.slot_mapping.tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_gather_baseline_matches_reference(scenario: str, dtype: torch.dtype) -> None:
    step, num_blocks = scenario_step(scenario, 16)
    meta = build_metadata(step, 16)
    q, k_cache, v_cache = random_inputs(step, num_blocks, 16, 2, 3, 32, dtype)
    out = attend(GatherAttention(), q, k_cache, v_cache, meta, 0.2)
    assert_near(out, reference_attention(q, k_cache, v_cache, meta, 0.2), dtype)
