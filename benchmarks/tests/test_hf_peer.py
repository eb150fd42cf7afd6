"""The transformers peer on a tiny random Llama: padded batches must give per-prompt greedy outputs."""

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from benchmarks.peers.hf_generate import BATCH_SIZES, HFEngine

VOCAB = 64


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=1, pad_token_id=2, bos_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t1", pad_token="t2", unk_token="t0").save_pretrained(d)
    return d


def unpadded_greedy(model, prompt, n):
    ids = torch.tensor([prompt])  # [1, len]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=2)  # [1, len + n]
    return out[0, len(prompt):].tolist()


def test_padded_batches_match_one_prompt_at_a_time(tiny_llama):
    engine = HFEngine(str(tiny_llama), "float32")
    prompts = [[5 + (i * 7 + j) % 50 for j in range(3 + i % 5)] for i in range(10)]
    max_tokens = [4 if i % 2 else 7 for i in range(10)]
    gen = engine.generate(prompts, max_tokens, {"batch_size": 4})
    assert [len(t) for t in gen.token_ids] == max_tokens
    with torch.inference_mode():
        want = [unpadded_greedy(engine.model, p, m) for p, m in zip(prompts, max_tokens)]
    assert gen.token_ids == want
    assert gen.cached_tokens == 0 and gen.extra["batch_size"] == 4
    assert gen.texts[0] == " ".join(f"t{t}" for t in want[0] if t not in (1, 2))


def test_auto_batch_size_is_calibrated_from_the_candidates(tiny_llama):
    engine = HFEngine(str(tiny_llama), "float32")
    gen = engine.generate([[5, 6, 7]] * 12, [2] * 12, {"batch_size": "auto"})
    assert gen.extra["batch_size"] in BATCH_SIZES and gen.extra["calibrate_s"] > 0
    assert len(gen.token_ids) == 12


def test_bad_batch_size_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="'big'"):
        HFEngine(str(tiny_llama), "float32").generate([[5]], [1], {"batch_size": "big"})
