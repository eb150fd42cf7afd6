"""OpenAI batch files as OpenAI's docs and SDK write them, run through the CLI on the default model:
log-probs in OpenAI's shapes, served model names, error lines in OpenAI's form (also for non-JSON
lines), `--errors FILE`, and plain lines' stop_reason / total_tokens / logprobs."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from batchcli.cli import app
from batchcli.requests import InputFormat, Request
from batchcli.params import SamplingParams
from batchcli.planning.tokenize import tokenize_requests
from helpers_openai import validate_openai_line

pytestmark = pytest.mark.slow
runner = CliRunner()


def _chat(custom_id: str, body: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


LINES = [
    _chat("parts", {"model": "smol", "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 2,
                    "messages": [{"role": "developer", "content": "Answer briefly."},
                                 {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Capital of"},
                                                                             {"type": "text", "text": "France?"}]}]}),
    {"custom_id": "cmpl", "method": "POST", "url": "/v1/completions",
     "body": {"model": "smol", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2}},
    _chat("wrong-model", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    b'{"custom_id": "torn", "method": "POST", "url": "/v1/chat/compl',
    {"method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "hi"}]}},
    _chat("parts", {"messages": [{"role": "user", "content": "again"}]}),
    {"id": "plain", "prompt": "The capital of France is", "max_tokens": 6, "logprobs": 1, "stop": [" Paris"]},
]


def _run(tmp_path, *extra: str):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in LINES))
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["run", str(src), "-o", str(out), "--quiet", "--dtype", "float32", "--order", "input",
                              "--served-model-name", "smol", *extra])
    return res, out


def _records(path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """LINES run once through the CLI: (the run's folder, exit code, output records in input order)."""
    folder = tmp_path_factory.mktemp("openai-batch")
    res, out = _run(folder)
    return folder, res.exit_code, _records(out)


def _by_name(batch) -> dict[str, dict]:
    names = ("chat", "cmpl", "wrong", "torn", "missing", "dup", "plain")
    return dict(zip(names, batch[2], strict=True))


def test_the_batch_exits_3_with_one_valid_record_per_line(batch):
    _, code, records = batch
    assert code == 3
    assert len(records) == len(LINES)
    for record in records:
        if "custom_id" in record:
            validate_openai_line(record)


def test_a_chat_answer_carries_the_served_model_name(batch):
    assert _by_name(batch)["chat"]["response"]["body"]["model"] == "smol"


def test_chat_logprobs_have_openais_shape_and_spell_the_content(batch):
    body = _by_name(batch)["chat"]["response"]["body"]
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] - (body["choices"][0]["finish_reason"] == "stop")
    assert all(len(c["top_logprobs"]) == 2 and c["top_logprobs"][0]["logprob"] >= c["logprob"] - 1e-6 for c in content)
    assert "".join(bytes(c["bytes"]).decode("utf-8", "replace") for c in content) == body["choices"][0]["message"]["content"]


def test_completions_logprobs_have_openais_shape_and_spell_the_text(batch):
    cmpl = _by_name(batch)["cmpl"]
    lp = cmpl["response"]["body"]["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert lp["text_offset"][0] == 0 and "".join(lp["tokens"]) == cmpl["response"]["body"]["choices"][0]["text"]


def test_another_model_name_is_model_not_found(batch):
    wrong = _by_name(batch)["wrong"]
    assert (wrong["error"]["code"], wrong["custom_id"], wrong["response"]) == ("model_not_found", "wrong-model", None)


def test_a_torn_line_is_invalid_json_without_custom_id(batch):
    torn = _by_name(batch)["torn"]
    assert (torn["error"]["code"], torn["custom_id"]) == ("invalid_json", None)


def test_a_line_without_custom_id_is_missing_required_parameter(batch):
    missing = _by_name(batch)["missing"]
    assert (missing["error"]["code"], missing["custom_id"]) == ("missing_required_parameter", None)


def test_a_duplicate_custom_id_gets_the_line_n_fallback(batch):
    dup = _by_name(batch)["dup"]
    # its record must not carry the id a valid line has (resume matches ids): the line-N fallback instead
    assert (dup["error"]["code"], dup["custom_id"]) == ("duplicate_id", f"line-{dup['line']}")


def test_a_plain_line_reports_its_stop_string(batch):
    plain = _by_name(batch)["plain"]
    assert plain["stop_reason"] == " Paris" and plain["finish_reason"] == "stop"


def test_a_plain_line_reports_total_tokens(batch):
    usage = _by_name(batch)["plain"]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_plain_logprobs_entries_have_exactly_their_fields(batch):
    assert all(set(e) == {"token_id", "token", "logprob", "top_logprobs"} for e in _by_name(batch)["plain"]["logprobs"])


def test_resume_counts_every_line_as_answered(batch):
    folder, _, records = batch
    res, out = _run(folder, "--resume")  # every line, custom_id-less ones included, counts as answered
    assert res.exit_code == 0 and _records(out) == records


def test_errors_file_takes_the_error_lines(tmp_path):
    errors = tmp_path / "errors.jsonl"
    res, out = _run(tmp_path, "--errors", str(errors))
    assert res.exit_code == 3, res.stderr
    assert [r.get("custom_id", r.get("id")) for r in _records(out)] == ["parts", "cmpl", "plain"]
    assert sorted(r["error"]["code"] for r in _records(errors)) == [
        "duplicate_id", "invalid_json", "missing_required_parameter", "model_not_found"]


def test_developer_role_renders_as_system_and_text_parts_join(smol_tokenizer):
    def ids(messages):
        request = Request("a", 1, InputFormat.CHAT, SamplingParams(), messages=tuple(messages))
        return tokenize_requests([request], smol_tokenizer).tokens[0].tolist()

    user = {"role": "user", "content": "Capital of\nFrance?"}
    assert ids([{"role": "developer", "content": "Be brief."}, user]) == ids([{"role": "system", "content": "Be brief."}, user])


def test_openai_lines_default_to_the_rest_of_the_context(smol_tokenizer):
    request = Request("a", 1, InputFormat.OPENAI_CHAT, SamplingParams(max_tokens=None, temperature=1.0),
                      messages=({"role": "user", "content": "hi"},), custom_id="a")
    batch = tokenize_requests([request], smol_tokenizer)
    assert batch.requests[0].params.max_tokens == smol_tokenizer.max_context - len(batch.tokens[0])
