"""Tokenization equals transformers' own on the default model, and bad lines become LineErrors."""

from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from batchcli.requests import InputFormat, LineError, Request
from batchcli.params import SamplingParams
from batchcli.planning.tokenize import tokenize_requests

P = SamplingParams(max_tokens=8)


def _req(i: int, **form) -> Request:
    fmt = InputFormat.CHAT if "messages" in form else InputFormat.TOKENS if "prompt_token_ids" in form else InputFormat.SIMPLE
    return Request(id=f"r{i}", line=i, format=fmt, params=form.pop("params", P), **form)


def test_plain_and_chat_match_transformers(smol_dir, smol_tokenizer):
    hf = AutoTokenizer.from_pretrained(str(smol_dir))
    prompts = ["Hello there", "  leading spaces and ünïcödé ✓", "Line one\nLine two\n"]
    chats = [({"role": "user", "content": "What is 2+2?"},),
             ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."})]
    items = [_req(i, prompt=p) for i, p in enumerate(prompts)] + [_req(10 + i, messages=m) for i, m in enumerate(chats)]
    out = tokenize_requests(items, smol_tokenizer)
    assert not out.errors
    for i, p in enumerate(prompts):
        assert out.tokens[i].tolist() == hf(p)["input_ids"]
    for j, m in enumerate(chats):
        want = hf.apply_chat_template(list(m), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert out.tokens[len(prompts) + j].tolist() == want
    assert out.tokens.flat.dtype == np.int32
    assert [r.prompt for r in out.requests[: len(prompts)]] == [""] * len(prompts)  # text dropped once encoded


def test_token_lines_are_checked(smol_tokenizer):
    vocab = smol_tokenizer.vocab_size
    items = [
        _req(1, prompt_token_ids=(1, 2, 3)),
        _req(2, prompt_token_ids=(1, vocab)),
        LineError("x", 3, "invalid_json", "bad"),
        _req(4, prompt_token_ids=(5,) * 10, params=SamplingParams(max_tokens=smol_tokenizer.max_context)),
        _req(5, prompt_token_ids=(7, 8)),
    ]
    out = tokenize_requests(items, smol_tokenizer)
    assert [r.id for r in out.requests] == ["r1", "r5"]
    assert [(e.line, e.code) for e in out.errors] == [(2, "invalid_token_id"), (3, "invalid_json"),
                                                      (4, "context_length_exceeded")]
    assert str(vocab) in out.errors[0].message
    assert out.tokens[1].tolist() == [7, 8]
