"""Our Llama-family model code against transformers on the same tiny random checkpoints.

Every case runs a multi-sequence prefill in one flat batch, then a decode step on its cache, and a
shared-segment case checks that attending a prefix written once gives the full-prompt logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from batchcli.engine.attention.metadata import build_metadata
from batchcli.engine.model import CausalLM, allocate_kv, kv_bytes_per_token
from batchcli.engine.step import SegmentView, SegOwner, SeqChunk, SeqOwner, StepBatch
from batchcli.engine.weights import load_model
from batchcli.errors import CheckpointError, ModelNotFoundError, UnsupportedModelError
from batchcli.model_config import SUPPORTED_MODEL_TYPES, eos_token_ids
from helpers_models import save_tiny_checkpoint, tiny_config

BLOCK = 4
ATOL = 1e-4
BACKENDS = ["reference", "torch"]
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
CASES = {
    "llama": dict(kind="llama"),
    "llama_sharded": dict(kind="llama", max_shard_size="50KB"),
    "llama_tied": dict(kind="llama", tie_word_embeddings=True),
    "llama3_rope": dict(kind="llama", rope_parameters=LLAMA3_ROPE),
    "linear_rope": dict(kind="llama", rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0}),
    "llama_biases": dict(kind="llama", attention_bias=True, mlp_bias=True, num_key_value_heads=1),
    "mistral": dict(kind="mistral", num_hidden_layers=3),
    "qwen2": dict(kind="qwen2"),
    "qwen3": dict(kind="qwen3", tie_word_embeddings=True),
}


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    """(directory, transformers model) for one case; built once per module."""
    directory = tmp_path_factory.mktemp(request.param)
    return directory, save_tiny_checkpoint(directory, seed=7, **CASES[request.param])


class Cache:
    """Private KV blocks handed out in order; a tiny stand-in for the engine's block pool."""

    def __init__(self, model: CausalLM, num_blocks: int = 64) -> None:
        self.kv = allocate_kv(model.arch, model.dtype, num_blocks, BLOCK, "cpu")
        self.next_block = 1  # block 0 stays unused so a wrong table entry (padding 0) reads zeros

    def blocks(self, num_tokens: int) -> tuple[int, ...]:
        n = -(-num_tokens // BLOCK)
        self.next_block += n
        return tuple(range(self.next_block - n, self.next_block))


def run_step(model: CausalLM, cache: Cache, chunks: list[SeqChunk], segments: dict[int, SegmentView] | None = None,
             sample_rows: torch.Tensor | None = None) -> torch.Tensor:
    step = StepBatch(chunks=tuple(chunks), segments=segments or {})
    meta = build_metadata(step, BLOCK)
    input_ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long)  # [T]
    positions = torch.cat([torch.arange(c.start_pos, c.start_pos + len(c.token_ids)) for c in chunks])  # [T]
    rows = torch.arange(len(input_ids)) if sample_rows is None else sample_rows  # [N]
    return model(input_ids, positions, cache.kv, meta, rows)


def hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor([tokens])).logits[0].float()  # [len, V]


def random_prompts(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n + 1,), generator=gen).tolist() for n in lengths]  # +1: the decode token


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill_then_decode_matches_transformers(checkpoint, backend):
    directory, hf_model = checkpoint
    model = load_model(directory, torch.float32, "cpu", backend)
    cache = Cache(model)
    lengths = [5, 9, 1, 12]  # odd, block-straddling, single-token and whole-block prompts
    seqs = random_prompts(lengths, hf_model.config.vocab_size, seed=1)
    blocks = [cache.blocks(len(s)) for s in seqs]
    expected = [hf_logits(hf_model, s) for s in seqs]  # [len + 1, V] each

    prefill = [SeqChunk(SeqOwner(i), tuple(s[:-1]), 0, 0, b, (), True) for i, (s, b) in enumerate(zip(seqs, blocks))]
    got = run_step(model, cache, prefill)  # [sum(lengths), V]
    assert got.dtype == torch.float32 and got.shape == (sum(lengths), hf_model.config.vocab_size)
    torch.testing.assert_close(got, torch.cat([e[:-1] for e in expected]), atol=ATOL, rtol=0)

    decode = [SeqChunk(SeqOwner(i), (s[-1],), len(s) - 1, 0, b, (), True) for i, (s, b) in enumerate(zip(seqs, blocks))]
    got = run_step(model, cache, decode)  # [4, V]
    torch.testing.assert_close(got, torch.stack([e[-1] for e in expected]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_shared_segment_matches_full_prompts(tmp_path, kind, backend):
    hf_model = save_tiny_checkpoint(tmp_path, kind=kind, seed=3)
    model = load_model(tmp_path, torch.float32, "cpu", backend)
    cache = Cache(model)
    prefix, tail_a, tail_b, alone = random_prompts([7, 5, 2, 6], hf_model.config.vocab_size, seed=2)
    prefix = prefix[:8]  # two whole blocks
    seg = SegmentView(seg_id=100, length=8, block_ids=cache.blocks(8))

    none = run_step(model, cache, [SeqChunk(SegOwner(100), tuple(prefix), 0, 0, seg.block_ids, (), False)],
                    sample_rows=torch.zeros(0, dtype=torch.long))
    assert none.shape == (0, hf_model.config.vocab_size)

    # two tails under the segment and one unrelated prompt, in one step
    blocks_a, blocks_b, blocks_c = cache.blocks(len(tail_a)), cache.blocks(len(tail_b)), cache.blocks(len(alone))
    chunks = [SeqChunk(SeqOwner(1), tuple(tail_a[:-1]), 8, 8, blocks_a, (100,), True),
              SeqChunk(SeqOwner(2), tuple(tail_b[:-1]), 8, 8, blocks_b, (100,), True),
              SeqChunk(SeqOwner(3), tuple(alone[:-1]), 0, 0, blocks_c, (), True)]
    got = run_step(model, cache, chunks, {100: seg})
    full_a, full_b = hf_logits(hf_model, prefix + tail_a), hf_logits(hf_model, prefix + tail_b)
    want = torch.cat([full_a[8:-1], full_b[8:-1], hf_logits(hf_model, alone)[:-1]])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    decode = [SeqChunk(SeqOwner(1), (tail_a[-1],), 8 + len(tail_a) - 1, 8, blocks_a, (100,), True),
              SeqChunk(SeqOwner(2), (tail_b[-1],), 8 + len(tail_b) - 1, 8, blocks_b, (100,), True)]
    got = run_step(model, cache, decode, {100: seg}, sample_rows=torch.tensor([1]))  # only b samples
    torch.testing.assert_close(got, full_b[-1:], atol=ATOL, rtol=0)


def test_the_backend_plans_once_per_step_for_every_layer(tmp_path):
    save_tiny_checkpoint(tmp_path, kind="llama", num_hidden_layers=3)
    model = load_model(tmp_path, torch.float32, "cpu", "torch")
    inner, plans, runs = model.backend, [], []

    class Counting:
        def plan(self, meta):
            plans.append(inner.plan(meta))
            return plans[-1]

        def run(self, q, k_cache, v_cache, plan, scale):
            runs.append(plan)
            return inner.run(q, k_cache, v_cache, plan, scale)

    model.backend = Counting()
    cache = Cache(model)
    run_step(model, cache, [SeqChunk(SeqOwner(0), (5, 6, 7, 8, 9), 0, 0, cache.blocks(5), (), True)])
    assert len(plans) == 1 and len(runs) == 3 and all(p is plans[0] for p in runs)


def test_bfloat16_error_is_that_of_transformers_in_bfloat16(tmp_path):
    hf_model = save_tiny_checkpoint(tmp_path, kind="qwen2", seed=5)
    model = load_model(tmp_path, torch.bfloat16, "cpu", "reference")
    assert model.dtype == torch.bfloat16 and model.weights.embed.dtype == torch.bfloat16
    cache = Cache(model)
    (tokens,) = random_prompts([30], hf_model.config.vocab_size, seed=4)
    got = run_step(model, cache, [SeqChunk(SeqOwner(0), tuple(tokens), 0, 0, cache.blocks(31), (), True)])
    want = hf_logits(hf_model, tokens)
    hf_bf16_error = (hf_logits(hf_model.to(torch.bfloat16), tokens) - want).abs().max()
    assert got.dtype == torch.float32
    assert (got - want).abs().max() <= 2 * hf_bf16_error


def test_arch_and_kv_sizing(tmp_path):
    save_tiny_checkpoint(tmp_path, kind="llama", num_hidden_layers=3)
    model = load_model(tmp_path, torch.bfloat16, "cpu", "reference")
    a = model.arch
    assert (a.num_layers, a.num_kv_heads, a.head_dim, a.num_heads, a.vocab_size, a.max_position_embeddings,
            model.dtype) == (3, 2, 16, 4, 128, 256, torch.bfloat16)
    assert kv_bytes_per_token(a, model.dtype) == 2 * 3 * 2 * 16 * 2
    kv = allocate_kv(a, model.dtype, num_blocks=5, block_size=8, device="cpu")
    assert kv.shape == (3, 2, 5, 8, 2, 16) and kv.dtype == torch.bfloat16 and not kv.any()
    with pytest.raises(ValueError, match="num_blocks"):
        allocate_kv(a, model.dtype, num_blocks=0, block_size=8, device="cpu")


def test_eos_token_ids_merges_config_and_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7, 9]}))
    assert eos_token_ids(tmp_path) == (2, 7, 9)
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": None}))
    assert eos_token_ids(tmp_path) == ()
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(CheckpointError, match="</s>"):
        eos_token_ids(tmp_path)


def _load(directory: Path) -> CausalLM:
    return load_model(directory, torch.float32, "cpu", "reference")


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*" + ", ".join(SUPPORTED_MODEL_TYPES)):
        _load(tmp_path)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(kind="llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}), "'dynamic'"),
    (dict(kind="mistral", sliding_window=16), "sliding_window 16"),
    (dict(kind="llama", hidden_act="gelu"), "'gelu'"),
])
def test_unsupported_options_are_named(tmp_path, overrides, message):
    kind = overrides.pop("kind")
    tiny_config(kind, **overrides).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=message):
        _load(tmp_path)


def test_checkpoint_problems_are_typed_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        _load(tmp_path / "nowhere")
    save_tiny_checkpoint(tmp_path, kind="llama")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(96, 64\)"):
        _load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(tmp_path / "model.safetensors")
    save_file({**weights, "model.layers.0.extra.weight": torch.zeros(3)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.layers.0.extra.weight"):
        _load(tmp_path)
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        _load(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only safetensors"):
        _load(tmp_path)


@pytest.mark.slow
def test_smollm2_matches_transformers(smol_dir):
    from transformers import LlamaForCausalLM

    hf_model = LlamaForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    model = _load(smol_dir)
    tokens = [1, 504, 3458, 282, 4649, 314, 1345, 30, 378, 3458, 282, 4649, 314]
    cache = Cache(model, num_blocks=8)
    got = run_step(model, cache, [SeqChunk(SeqOwner(0), tuple(tokens), 0, 0, cache.blocks(len(tokens)), (), True)])
    want = hf_logits(hf_model, tokens)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-4)
    assert eos_token_ids(smol_dir) == (2,)
