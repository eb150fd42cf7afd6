"""Score and rerank lines (vLLM's /v1/score and /v1/rerank bodies): the body rules, the judgement
prompt (Qwen3-Reranker's exact tokens, or the chat template's), and relevance end to end equal to
transformers' softmax over the "no"/"yes" logits at the prompt's end, on the same weights and tokens;
then a mixed file of every endpoint on the default model.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import orjson
import pytest
import torch
from typer.testing import CliRunner

from batchcli.cli import app
from batchcli.formats.output import render_pooled
from batchcli.formats.scores import DEFAULT_INSTRUCTION, pair_text
from batchcli.io.reader import read_requests
from batchcli.model_tasks import ModelTasks
from batchcli.planning.judgement import SYSTEM, is_qwen3_reranker
from batchcli.planning.tokenize import PromptTokenizer
from batchcli.pooling_params import PoolingParams
from batchcli.params import SamplingParams
from batchcli.requests import InputFormat, LineError
from batchcli.engine.events import Pooled
from batchcli.results import PooledResult
from helpers_models import save_tiny_checkpoint, save_tiny_with_tokenizer
from helpers_openai import validate_openai_line

runner = CliRunner()


def _done(request, values, prompt_tokens: int, cached_tokens: int) -> PooledResult:
    """The front half's record of a pooled part the engine answered with `values`."""
    return PooledResult(request, Pooled(0, values, prompt_tokens, cached_tokens))
JUDGE = PoolingParams("logits", token_ids=(4, 7))
TASKS = ModelTasks(embed=PoolingParams("last", normalize=True), hidden_size=64, matryoshka=False, judge=JUDGE)


def _line(custom_id: str, url: str, body: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _read(tmp_path, *rows: dict, tasks: ModelTasks = TASKS) -> list:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return list(read_requests(path, SamplingParams(), tasks=tasks))


def test_score_pairs_one_query_with_each_document_or_pair_by_pair(tmp_path):
    one = _read(tmp_path, _line("s", "/v1/score", {"queries": "q", "documents": ["d0", "d1"]}))
    pairwise = _read(tmp_path, _line("s", "/v1/score", {"text_1": ["q0", "q1"], "text_2": ["d0", "d1"], "instruction": "I"}))
    assert [r.prompt for r in one] == [pair_text(DEFAULT_INSTRUCTION, "q", d) for d in ("d0", "d1")]
    assert [r.prompt for r in pairwise] == ["<Instruct>: I\n<Query>: q0\n<Document>: d0", "<Instruct>: I\n<Query>: q1\n<Document>: d1"]
    assert all(r.pooling == JUDGE and r.format is InputFormat.OPENAI_SCORE for r in one + pairwise)
    assert [r.part for r in pairwise] == [0, 1] and pairwise[0].echo.count == 2


def test_rerank_parts_keep_their_documents(tmp_path):
    parts = _read(tmp_path, _line("r", "/v1/rerank", {"query": "q", "documents": ["a", "b", "c"], "top_n": 2}))
    assert [r.part for r in parts] == [0, 1, 2] and parts[0].echo.documents == ("a", "b", "c") and parts[0].echo.top_n == 2
    assert parts[2].prompt == pair_text(DEFAULT_INSTRUCTION, "q", "c") and parts[0].format is InputFormat.OPENAI_RERANK


@pytest.mark.parametrize("url, body, code, words", [
    ("/v1/score", {"queries": ["a", "b"], "documents": ["x", "y", "z"]}, "invalid_value", "one per document"),
    ("/v1/score", {"queries": "a", "text_2": ["x"]}, "missing_prompt", "not both spellings"),
    ("/v1/score", {"queries": "a", "documents": []}, "invalid_type", "body.documents"),
    ("/v1/score", {"queries": "a", "documents": "x", "top_n": 1}, "unknown_field", "body.top_n"),
    ("/v1/rerank", {"documents": ["x"]}, "missing_prompt", "body.query"),
    ("/v1/rerank", {"query": "q", "documents": "x"}, "invalid_type", "list of strings"),
    ("/v1/rerank", {"query": "q", "documents": ["x", 3]}, "invalid_type", "body.documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": ["x"], "top_n": -1}, "invalid_value", "body.top_n"),
])
def test_bad_bodies_are_error_lines(tmp_path, url, body, code, words):
    (err,) = _read(tmp_path, _line("r", url, body))
    assert isinstance(err, LineError) and err.code == code and words in err.message, err


def test_a_model_that_cannot_judge_gives_its_reason(tmp_path):
    tasks = ModelTasks(embed="-", hidden_size=64, matryoshka=False, judge='the tokenizer has no single token for "yes"')
    (err,) = _read(tmp_path, _line("r", "/v1/rerank", {"query": "q", "documents": ["x"]}), tasks=tasks)
    assert err.code == "unsupported" and "cannot judge relevance" in err.message


def test_rerank_results_are_sorted_by_relevance_and_cut_at_top_n(tmp_path):
    parts = _read(tmp_path, _line("r", "/v1/rerank", {"query": "q", "documents": ["a", "b", "c"], "top_n": 2}))
    logits = [(0.0, -1.0), (0.0, 2.0), (1.0, 1.0)]  # (no, yes): yes-probabilities 0.27, 0.88, 0.5
    done = [_done(r, np.array(v, np.float32), 10, 6) for r, v in zip(parts, logits)]
    body = render_pooled(done, model="m")["response"]["body"]  # validated as vLLM's RerankResponse (conftest)
    assert [(x["index"], x["document"]["text"]) for x in body["results"]] == [(1, "b"), (2, "c")]
    assert body["results"][0]["relevance_score"] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert body["usage"] == {"prompt_tokens": 30, "total_tokens": 30}
    score = _read(tmp_path, _line("s", "/v1/score", {"queries": "q", "documents": ["a", "b"]}))
    body = render_pooled([_done(r, np.array(v, np.float32), 10, 6) for r, v in zip(score, logits)], model="m",
                         created=7)["response"]["body"]
    assert [d["score"] for d in body["data"]] == pytest.approx([1 / (1 + math.e), 0.5 + 0.5 * math.tanh(1.0)])
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 12} and body["created"] == 7


# ---- the judgement prompt -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory, smol_dir):
    """A tiny random Llama with SmolLM2's tokenizer (whose chat template frames the judgement)."""
    return save_tiny_with_tokenizer(tmp_path_factory.mktemp("tiny-judge"), smol_dir)


def test_the_default_judgement_is_the_chat_template_with_the_judge_system_line(tiny_judge):
    tok = PromptTokenizer(tiny_judge)
    assert not tok.judgement.qwen3_reranker
    text = tok.tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "P"}],
                                       add_generation_prompt=True, tokenize=False)
    assert tok.judgement.encode(["P"]) == [tok.tok(text, add_special_tokens=False)["input_ids"]]
    assert tok.judgement.yes_no() == tuple(tok.tok.convert_tokens_to_ids(["no", "yes"]))


def test_a_qwen3_reranker_gets_its_model_cards_tokens(tmp_path, smol_dir):
    directory = tmp_path / "Qwen3-Reranker-tiny"
    save_tiny_checkpoint(directory, "qwen3", vocab_size=49152)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smol_dir / name, directory / name)
    assert is_qwen3_reranker(directory) and not is_qwen3_reranker(smol_dir)
    tok = PromptTokenizer(directory)
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
              "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    pair = "<Instruct>: I\n<Query>: q\n<Document>: d"
    enc = lambda t: tok.tok.encode(t, add_special_tokens=False)  # noqa: E731
    assert tok.judgement.encode([pair]) == [enc(prefix) + enc(pair) + enc(suffix)]


def _hf_relevance(model_dir, prompts: list[list[int]], yes_no: tuple[int, int]) -> list[float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return [torch.softmax(model(torch.tensor([p])).logits[0, -1, list(yes_no)], dim=-1)[1].item() for p in prompts]


@pytest.mark.parametrize("sharing", ["multi", "off"])
def test_scores_equal_transformers_yes_no_softmax(tmp_path, tiny_judge, sharing):
    documents = ["Cats purr when content.", "Paris is the capital of France.", "Dogs bark at strangers."]
    rows = [_line("r1", "/v1/rerank", {"query": "Do cats purr?", "documents": documents, "top_n": 2}),
            _line("s1", "/v1/score", {"text_1": ["Do cats purr?", "Where is Paris?"], "text_2": documents[:2]})]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = runner.invoke(app, ["run", str(src), "-o", str(out), "--model", str(tiny_judge), "--quiet", "--dtype", "float32",
                              "--sharing", sharing, "--order", "input", "--metrics", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.stderr
    rerank, score = (orjson.loads(x)["response"]["body"] for x in out.read_bytes().splitlines())
    tok = PromptTokenizer(tiny_judge)
    frame = lambda q, d: tok.tok(tok.tok.apply_chat_template(  # noqa: E731
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": pair_text(DEFAULT_INSTRUCTION, q, d)}],
        add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    yes_no = tuple(tok.tok.convert_tokens_to_ids(["no", "yes"]))
    want = _hf_relevance(tiny_judge, [frame("Do cats purr?", d) for d in documents], yes_no)
    ranked = sorted(range(3), key=lambda k: -want[k])[:2]
    assert [r["index"] for r in rerank["results"]] == ranked
    assert [r["document"]["text"] for r in rerank["results"]] == [documents[k] for k in ranked]
    assert [r["relevance_score"] for r in rerank["results"]] == pytest.approx([want[k] for k in ranked], abs=1e-5)
    want_pairs = _hf_relevance(tiny_judge, [frame("Do cats purr?", documents[0]), frame("Where is Paris?", documents[1])], yes_no)
    assert [d["score"] for d in score["data"]] == pytest.approx(want_pairs, abs=1e-5)
    saving = orjson.loads((tmp_path / "m.json").read_bytes())["saving_ratio"]
    assert (saving > 0.5) == (sharing == "multi")  # the judge's frame and the query are computed once


@pytest.mark.slow
def test_a_mixed_file_on_the_default_model_answers_every_line_once(tmp_path):
    rows = [
        _line("chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}),
        _line("emb", "/v1/embeddings", {"input": ["Instruct: find\nQuery: cats", "Instruct: find\nQuery: dogs"]}),
        _line("emb64", "/v1/embeddings", {"input": "hello", "encoding_format": "base64"}),
        _line("score", "/v1/score", {"queries": "What is a cat?", "documents": ["A small feline.", "A city."]}),
        _line("rerank", "/v1/rerank", {"query": "What is a cat?", "documents": ["A city.", "A small feline."], "top_n": 1}),
        _line("url", "/v1/moderations", {"input": "x"}),
        _line("model", "/v1/embeddings", {"input": "x", "model": "another-model"}),
        _line("dims", "/v1/embeddings", {"input": "x", "dimensions": 8}),
        {"id": "plain", "input": "text"},
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = runner.invoke(app, ["run", str(src), "-o", str(out), "--quiet"])
    assert res.exit_code == 3, res.stderr
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    by_id = {x.get("custom_id") or x["id"]: x for x in lines}
    assert len(lines) == len(rows) == len(by_id)
    for x in lines:
        if "custom_id" in x:
            validate_openai_line(x)
    errors = {k: x["error"]["code"] for k, x in by_id.items() if x.get("error")}
    assert errors == {"url": "unsupported", "model": "model_not_found", "dims": "unsupported"}
    assert len(by_id["emb"]["response"]["body"]["data"]) == 2 and len(by_id["plain"]["embedding"]) == 576
    assert len(by_id["rerank"]["response"]["body"]["results"]) == 1
    assert all(0 < d["score"] < 1 for d in by_id["score"]["response"]["body"]["data"])
