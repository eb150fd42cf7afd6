"""The fused CPU ops (batchcli.engine.native) against the eager torch code and the float32 reference,
the build cache, and the engine on the native path against transformers token for token.

Skipped as a whole where the ops cannot be built (no AVX-512 or no C++ compiler): the engine then
runs the eager path, which the rest of the suite covers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from batchcli.engine.attention.metadata import build_metadata
from batchcli.engine.attention.reference import reference_attention
from batchcli.engine.fused import AUTO_MIN_TOKENS, choose_fused
from batchcli.engine.model import apply_rope, rms_norm
from batchcli.engine.native import build
from batchcli.engine.native.build import NativeUnavailable, cached_native, load_native
from batchcli.engine.native.ops import NativeAttention, NativeKV, NativeOps, available_kernels
from batchcli.model_config import load_config
from batchcli.errors import EngineConfigError
from batchcli.params import SamplingParams
from helpers_models import save_tiny_checkpoint
from helpers_attention import GQA, SCENARIOS, assert_near, attend, random_inputs, scenario_step
from test_engine import hf_greedy, make_job, run_engine, shared_prompts

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("native-cache")
    try:
        load_native(directory)
    except NativeUnavailable as exc:
        pytest.skip(f"fused CPU ops unavailable here: {exc}")
    return directory


@pytest.fixture(scope="module")
def lib(cache):
    return cached_native(cache)


def kernels_for(dtype: torch.dtype) -> list:
    """Every attention kernel the suite can check on this CPU, for that dtype."""
    return ["fma", "dot", "amx"] if dtype == torch.bfloat16 else ["fma"]


def native_attend(lib, dtype, kernel, n_kv, group, q, k_cache, v_cache, meta, scale) -> torch.Tensor:
    if kernel not in available_kernels(lib) and dtype == torch.bfloat16:
        pytest.skip(f"this CPU does not run the {kernel!r} attention kernel")
    cache = NativeKV.from_standard(k_cache, v_cache)
    return attend(NativeAttention(NativeOps(lib, dtype, kernel), n_kv, group), q, cache.keys, cache.values, meta, scale)


CASES = [(dtype, kernel) for dtype in DTYPES for kernel in kernels_for(dtype)]
CASE_IDS = [f"{'bf16' if dtype == torch.bfloat16 else 'fp32'}-{kernel}" for dtype, kernel in CASES]


@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("n_kv,group", GQA)
@pytest.mark.parametrize("dtype,kernel", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_attention_matches_reference(lib, scenario, dtype, kernel, n_kv, group, d):
    step, num_blocks = scenario_step(scenario, 16)
    meta = build_metadata(step, 16)
    q, k_cache, v_cache = random_inputs(step, num_blocks, 16, n_kv, group, d, dtype)
    scale = 1 / math.sqrt(d)
    out = native_attend(lib, dtype, kernel, n_kv, group, q, k_cache, v_cache, meta, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert_near(out, reference_attention(q, k_cache, v_cache, meta, scale), dtype)


@pytest.mark.parametrize("kernel", kernels_for(torch.bfloat16))
@pytest.mark.parametrize("scenario", ["decode", "nested", "mixed"])
def test_attention_with_32_token_blocks(lib, scenario, kernel):
    step, num_blocks = scenario_step(scenario, 32, seed=5)
    meta = build_metadata(step, 32)
    q, k_cache, v_cache = random_inputs(step, num_blocks, 32, 2, 3, 64, torch.bfloat16)
    out = native_attend(lib, torch.bfloat16, kernel, 2, 3, q, k_cache, v_cache, meta, 0.125)
    assert_near(out, reference_attention(q, k_cache, v_cache, meta, 0.125), torch.bfloat16)


def test_the_best_kernel_is_the_default(lib):
    """Chosen by what this CPU runs, never by a timing: AMX where present, else AVX512-BF16, else FMAs."""
    runs = available_kernels(lib)
    assert NativeOps(lib, torch.bfloat16).kernel == runs[-1] and NativeOps(lib, torch.float32).kernel == "fma"
    flags = build.cpu_flags()
    assert ("amx" in runs) == ({"amx_tile", "amx_bf16"} <= flags)
    assert ("dot" in runs) == ("avx512_bf16" in flags)
    with pytest.raises(ValueError, match="does not run"):
        NativeOps(lib, torch.float32, "dot")


def test_decodes_under_one_segment_share_a_work_item(lib):
    """The 'decode' scenario's four decodes under segment 0 form one group: one item per KV head."""
    step, _ = scenario_step("decode", 16)
    work = NativeAttention(NativeOps(lib, torch.float32), 2, 3).plan(build_metadata(step, 16))
    sizes = sorted(int(work.group_chunks_start[g + 1] - work.group_chunks_start[g])
                   for g in range(len(work.group_chunks_start) - 1))
    assert sizes == [1, 1, 4] and len(work.items) == 2 * 3


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm(lib, dtype, with_delta):
    gen = torch.Generator().manual_seed(1)
    x, delta = (torch.randn(37, 576, generator=gen).to(dtype) for _ in range(2))
    weight = (1 + 0.1 * torch.randn(576, generator=gen)).to(dtype)
    got_x = x.clone()
    got = NativeOps(lib, dtype).add_rms_norm(got_x, delta if with_delta else None, weight, 1e-5)
    want_x = x + delta if with_delta else x
    want = rms_norm(want_x, weight, 1e-5)
    assert torch.equal(got_x, want_x)
    if dtype == torch.bfloat16:  # every rounding where the eager code rounds: bit for bit
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_silu_mul(lib, dtype):
    gate_up = (3 * torch.randn(19, 2 * 96, generator=torch.Generator().manual_seed(2))).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    want = F.silu(gate) * up
    got = NativeOps(lib, dtype).silu_mul(gate_up)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=8e-3)  # one bf16 step
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_rope_store_kv(lib, dtype):
    tokens, n_q, n_kv, d, bs, blocks = 7, 6, 2, 64, 16, 5
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(tokens, n_q + 2 * n_kv, d, generator=gen).to(dtype)
    angles = torch.outer(torch.arange(100, dtype=torch.float32), torch.rand(d // 2, generator=gen))
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)  # [P, d/2]
    positions = torch.tensor([0, 3, 4, 50, 51, 52, 99])
    slots = torch.tensor([5, 17, 18, 40, 41, 63, 70])  # blocks 0, 1, 1, 2, 2, 3, 4
    storage = torch.zeros(2, blocks, bs, n_kv, d, dtype=dtype)  # one layer of the engine's cache
    q = NativeOps(lib, dtype).rope_store_kv(qkv, cos, sin, positions, slots, NativeKV.over(storage), n_q)
    rotated = apply_rope(qkv[:, : n_q + n_kv], cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))
    k_std, v_std = _standard_layout(NativeKV.over(storage))
    if dtype == torch.bfloat16:  # rounded where the eager code rounds: bit for bit
        assert torch.equal(q, rotated[:, :n_q]) and torch.equal(k_std[slots], rotated[:, n_q:])
    else:  # float32 may differ in the last bit where torch fuses a multiply-add
        torch.testing.assert_close(q, rotated[:, :n_q], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(k_std[slots], rotated[:, n_q:], atol=1e-6, rtol=1e-6)
    assert torch.equal(v_std[slots], qkv[:, n_q + n_kv :])
    untouched = torch.ones(blocks * bs, dtype=torch.bool)
    untouched[slots] = False
    assert not k_std[untouched].any() and not v_std[untouched].any()
    again = NativeKV.from_standard(k_std.view(blocks, bs, n_kv, d), v_std.view(blocks, bs, n_kv, d))
    assert torch.equal(again.keys, NativeKV.over(storage).keys) and torch.equal(again.values, NativeKV.over(storage).values)


def _standard_layout(kv: NativeKV) -> tuple[torch.Tensor, torch.Tensor]:
    """A native-layout cache back to [slot, n_kv, d] keys and values, by indexing (not by re-laying)."""
    blocks, bs, n_kv, d = kv.shape
    slot = torch.arange(blocks * bs)
    block, tok = slot // bs, slot % bs  # [S]
    head, dim = torch.arange(n_kv).view(1, -1, 1), torch.arange(d).view(1, 1, -1)
    b, t = block.view(-1, 1, 1), tok.view(-1, 1, 1)
    if kv.keys.dim() == 5:  # bf16 pairs
        keys = kv.keys[b, head, dim // 2, t, dim % 2]  # [S, n_kv, d]
        values = kv.values[b, head, t // 2, dim, t % 2]
    else:
        keys, values = kv.keys[b, head, dim, t], kv.values[b, t, head, dim]
    return keys, values


def test_ops_reject_wrong_inputs(lib):
    ops = NativeOps(lib, torch.bfloat16)
    with pytest.raises(ValueError, match="x: want a contiguous CPU torch.bfloat16"):
        ops.add_rms_norm(torch.zeros(4, 32), None, torch.zeros(32, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_mul(torch.zeros(4, 64, dtype=torch.bfloat16).t())


def test_build_is_cached_and_keyed(cache, monkeypatch, tmp_path):
    again = load_native(cache)
    assert again.build_s == 0.0  # loaded, not rebuilt
    monkeypatch.setattr(build, "SOURCE", tmp_path / "ops.cpp")
    (tmp_path / "ops.cpp").write_text(build.Path(build.__file__).with_name("ops.cpp").read_text() + "\n// edited\n")
    assert cached_native(cache) is None  # another source is another key


def test_a_failing_compiler_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(NativeUnavailable, match="building the fused CPU ops failed") as info:
        load_native(tmp_path)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written left behind


def test_choose_fused_falls_back_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")
    lines: list[str] = []
    arch = _arch(tmp_path)
    assert choose_fused("on", "auto", arch, torch.float32, 16, 10**6, tmp_path, lines.append) is None
    assert len(lines) == 1 and "eager" in lines[0]
    with pytest.raises(EngineConfigError, match="attention: native: "):
        choose_fused("auto", "native", arch, torch.float32, 16, 10**6, tmp_path, lines.append)


def test_auto_never_builds_for_a_small_job(tmp_path):
    lines: list[str] = []
    assert choose_fused("auto", "auto", _arch(tmp_path), torch.float32, 16, AUTO_MIN_TOKENS - 1, tmp_path,
                        lines.append) is None
    assert lines == [] and not (tmp_path / "native").exists()


def test_auto_uses_an_existing_build_for_a_small_job(cache, tmp_path):
    ops = choose_fused("auto", "auto", _arch(tmp_path), torch.float32, 16, 1, cache, lambda line: None)
    assert ops is not None and ops.build_s == 0.0


def _arch(tmp_path: Path):
    directory = tmp_path / "model"
    save_tiny_checkpoint(directory, "llama", head_dim=32)
    return load_config(directory)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def tiny32(request, tmp_path_factory):
    """A tiny checkpoint the fused ops support (head_dim 32), with transformers' greedy answers."""
    directory = tmp_path_factory.mktemp(f"{request.param}-d32")
    model = save_tiny_checkpoint(directory, request.param, seed=7, eos_token_id=2, head_dim=32)
    prompts = shared_prompts(systems=(20, 35), docs=(17, 30), question=9, solo=40)  # whole 16-token blocks shared
    max_new = [4 + (i % 5) for i in range(len(prompts))]
    expected = {f"r{i}": hf_greedy(model, p, m) for i, (p, m) in enumerate(zip(prompts, max_new))}
    return directory, prompts, max_new, expected


@pytest.mark.parametrize("config", [dict(), dict(token_budget=7), dict(kv_budget="160tok", token_budget=40, max_running=6)],
                         ids=["plain", "chunked-prefill", "preemption"])
def test_native_engine_matches_transformers(tiny32, cache, config):
    directory, prompts, max_new, expected = tiny32
    job = make_job(prompts, [SamplingParams(max_tokens=m) for m in max_new], "multi", block_size=16)
    assert job.plan.stats.saving_ratio > 0.2
    stats: list = []
    got = run_engine(directory, job, stats, **{"attention": "native", "cache": cache, **config})
    assert stats[0].attention == "native"
    assert {k: v[0] for k, v in got.items()} == expected
    if "kv_budget" in config:
        assert stats[0].preemptions > 0, "the KV budget was meant to force preemption"


@pytest.mark.parametrize("dtype,kernel", CASES, ids=CASE_IDS)
def test_attention_with_large_scores(lib, dtype, kernel):
    """Scores in the hundreds: the running max moves many times (each move rescales), and a weight
    computed against a stale max must never overflow. Rounding scores that large moves the softmax
    of the reference too, hence 10x the tolerance (as for the torch backend)."""
    step, num_blocks = scenario_step("nested", 16)
    meta = build_metadata(step, 16)
    q, k_cache, v_cache = random_inputs(step, num_blocks, 16, 2, 3, 64, dtype)
    q = q * 60.0
    out = native_attend(lib, dtype, kernel, 2, 3, q, k_cache, v_cache, meta, 0.125)
    assert_near(out, reference_attention(q, k_cache, v_cache, meta, 0.125), dtype, loosen=10.0)
