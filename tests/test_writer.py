"""Writer and rendering tests: exact output objects, no clobbering, resume, input-order buffering."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchcli.formats.output import render_error, render_result
from batchcli.requests import InputFormat, LineError, Request
from batchcli.params import SamplingParams
from batchcli.engine.events import Answer, Completion
from batchcli.results import Result
from batchcli.io.writer import (
    Answered,
    ConflictingOptionsError,
    CorruptOutputError,
    OutputExistsError,
    OutputUnwritableError,
    OutputWriter,
    WriteCounts,
)


def lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def result(fmt: InputFormat, *, n: int = 1, line: int = 4, custom_id: str | None = None,
           model: str | None = None) -> Result:
    kwargs = {"prompt_token_ids": (1, 2, 3)} if fmt is InputFormat.TOKENS else {"prompt": "p"}
    if fmt in (InputFormat.CHAT, InputFormat.OPENAI_CHAT):
        kwargs = {"messages": ({"role": "user", "content": "p"},)}
    request = Request("q1", line, fmt, SamplingParams(n=n), custom_id=custom_id, model=model, **kwargs)
    completions = (Completion("Hello", (7, 8), "stop"), Completion("Hey there", (9, 10, 11), "length"))[:n]
    return Result(request, Answer(0, completions, prompt_tokens=12, cached_tokens=8))


USAGE = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14, "cached_tokens": 8}


@pytest.mark.parametrize("fmt", [InputFormat.SIMPLE, InputFormat.CHAT, InputFormat.TOKENS])
def test_render_plain_single(fmt: InputFormat) -> None:
    assert render_result(result(fmt)) == {"id": "q1", "text": "Hello", "finish_reason": "stop", "stop_reason": None,
                                          "usage": USAGE}


def test_render_plain_n2() -> None:
    assert render_result(result(InputFormat.SIMPLE, n=2)) == {
        "id": "q1",
        "choices": [{"index": 0, "text": "Hello", "finish_reason": "stop", "stop_reason": None},
                    {"index": 1, "text": "Hey there", "finish_reason": "length", "stop_reason": None}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17, "cached_tokens": 8},
    }


def test_render_plain_stop_reason() -> None:
    request = Request("q1", 4, InputFormat.SIMPLE, SamplingParams(n=2), prompt="p")
    done = Result(request, Answer(0, (Completion("Hi", (7,), "stop", stop_reason="\n"),
                                      Completion("", (), "stop", stop_reason=5)), prompt_tokens=3, cached_tokens=0))
    assert [c["stop_reason"] for c in render_result(done)["choices"]] == ["\n", 5]


def test_render_openai_completion() -> None:
    got = render_result(result(InputFormat.OPENAI_COMPLETION, custom_id="q1"), model="served", created=99)
    digest = got["id"].removeprefix("batch_req_")
    assert len(digest) == 24 and int(digest, 16) >= 0
    assert got == {
        "id": f"batch_req_{digest}",
        "custom_id": "q1",
        "response": {"status_code": 200, "request_id": f"req_{digest}", "body": {
            "id": f"cmpl-{digest}", "object": "text_completion", "created": 99, "model": "served",
            "choices": [{"index": 0, "text": "Hello", "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14,
                      "prompt_tokens_details": {"cached_tokens": 8}},
        }},
        "error": None,
    }


def test_render_openai_chat_names_the_served_model_and_n2() -> None:
    got = render_result(result(InputFormat.OPENAI_CHAT, n=2, custom_id="q1", model="gpt-x"), model="served")
    digest = got["id"].removeprefix("batch_req_")
    assert got["response"]["body"] == {
        "id": f"chatcmpl-{digest}", "object": "chat.completion", "created": 0, "model": "served",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop", "logprobs": None},
            {"index": 1, "message": {"role": "assistant", "content": "Hey there"}, "finish_reason": "length",
             "logprobs": None},
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                  "prompt_tokens_details": {"cached_tokens": 8}},
    }


def test_openai_ids_are_deterministic_and_distinct_per_line() -> None:
    first = render_result(result(InputFormat.OPENAI_COMPLETION, custom_id="q1", line=4))["id"]
    again = render_result(result(InputFormat.OPENAI_COMPLETION, custom_id="q1", line=4))["id"]
    other = render_result(result(InputFormat.OPENAI_COMPLETION, custom_id="q1", line=5))["id"]
    assert first == again != other
    err = render_error(LineError("q1", 4, "invalid_value", "m", custom_id="q1"), None)
    assert err["id"] == first


def test_render_errors() -> None:
    plain = LineError("q9", 3, "invalid_json", "not valid JSON")
    assert render_error(plain, None) == {"id": "q9", "line": 3, "error": {"code": "invalid_json", "message": "not valid JSON"}}
    assert render_error(plain, InputFormat.CHAT) == render_error(plain, None)
    openai = render_error(LineError("r1", 2, "unsupported", "no stream", custom_id="r1"), None)
    assert openai == {"id": openai["id"], "custom_id": "r1", "response": None,
                      "error": {"code": "unsupported", "message": "no stream"}, "line": 2}
    assert openai["id"].startswith("batch_req_")
    # A later failure of a parsed OpenAI request (e.g. prompt too long) picks the form from fmt.
    late = render_error(LineError("r1", 2, "unsupported", "no stream"), InputFormat.OPENAI_CHAT)
    assert late == openai


def test_completion_order_writes_and_flushes_each_record(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputWriter(out) as writer:
        writer.write({"id": "a", "text": "x"})
        assert lines(out) == [{"id": "a", "text": "x"}]  # on disk before close
        writer.write({"id": "b", "line": 2, "error": {"code": "c", "message": "m"}})
        writer.write({"id": "c", "custom_id": "c", "response": {}, "error": None})
    assert [r["id"] for r in lines(out)] == ["a", "b", "c"]
    assert writer.counts == WriteCounts(successes=2, errors=1)


def test_input_order_holds_records_until_earlier_keys_arrive(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputWriter(out, order="input") as writer:
        writer.expect([1, 2, 5])
        writer.expect([9])
        writer.write({"id": "e"}, key=5)
        writer.write({"id": "b"}, key=2)
        assert lines(out) == []
        writer.write({"id": "a"}, key=1)
        assert [r["id"] for r in lines(out)] == ["a", "b", "e"]
        with pytest.raises(ValueError, match="key 2"):
            writer.write({"id": "b2"}, key=2)
        with pytest.raises(ValueError, match="key 3"):
            writer.write({"id": "c"}, key=3)
    assert [r["id"] for r in lines(out)] == ["a", "b", "e"]


def test_input_order_close_flushes_held_records_past_a_gap(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    writer = OutputWriter(out, order="input")
    writer.expect([10, 20, 30, 40])
    writer.write({"id": "d"}, key=40)
    writer.write({"id": "b"}, key=20)
    assert lines(out) == []
    writer.close()  # key 10 and 30 never came (a stopped run): the rest still lands, in order
    assert [r["id"] for r in lines(out)] == ["b", "d"]
    with pytest.raises(ValueError, match="closed"):
        writer.write({"id": "late"}, key=30)


def test_existing_output_is_refused_and_empty_one_is_used(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "old"}\n')
    with pytest.raises(OutputExistsError, match="out.jsonl"):
        OutputWriter(out)
    assert out.read_bytes() == b'{"id": "old"}\n'
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with OutputWriter(empty) as writer:
        writer.write({"id": "a"})
    assert lines(empty) == [{"id": "a"}]


def test_overwrite_replaces(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "old"}\n')
    with OutputWriter(out, overwrite=True) as writer:
        assert writer.answered() == Answered()
        writer.write({"id": "new"})
    assert lines(out) == [{"id": "new"}]


def test_resume_collects_answered_ids_and_cuts_torn_tail(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(
        b'{"id":"a","text":"x"}\n'
        b'{"id":"l2","line":2,"error":{"code":"invalid_json","message":"m"}}\n'
        b'{"id":"batch_req_1","custom_id":"c","response":null,"error":{"code":"x","message":"m"},"line":3}\n'
        b'{"id":"batch_req_2","custom_id":null,"response":null,"error":{"code":"invalid_json","message":"m"},"line":4}\n'
        b'{"id":"d","te'
    )
    with OutputWriter(out, resume=True) as writer:
        assert writer.answered() == Answered(frozenset({"a"}), frozenset({2, 3, 4}))
        writer.write({"id": "d", "text": "y"})
    assert [r["id"] for r in lines(out)] == ["a", "l2", "batch_req_1", "batch_req_2", "d"]
    assert writer.counts == WriteCounts(successes=1, errors=0)


def test_resume_of_missing_or_clean_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputWriter(out, resume=True) as writer:
        assert writer.answered() == Answered()
        writer.write({"id": "a"})
    with OutputWriter(out, resume=True) as writer:
        assert writer.answered() == Answered(frozenset({"a"}))
        writer.write({"id": "b"})
    assert out.read_bytes() == b'{"id":"a"}\n{"id":"b"}\n'


@pytest.mark.parametrize("content", [b'{"id":"a"}\nnot json\n{"id":"b"}\n', b'{"id":"a"}\n[1]\n', b'{"text":"x"}\n',
                                     b'{"id":"e","error":{"code":"x","message":"m"}}\n'])
def test_resume_refuses_a_file_that_is_not_ours(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    with pytest.raises(CorruptOutputError, match=r"out\.jsonl:\d"):
        OutputWriter(out, resume=True)
    assert out.read_bytes() == content


def test_bad_option_combinations(tmp_path: Path) -> None:
    with pytest.raises(ConflictingOptionsError, match="resume and overwrite"):
        OutputWriter(tmp_path / "o.jsonl", resume=True, overwrite=True)
    with pytest.raises(ConflictingOptionsError, match="stdout"):
        OutputWriter("-", resume=True)
    with pytest.raises(ConflictingOptionsError, match="'random'"):
        OutputWriter(tmp_path / "o.jsonl", order="random")  # type: ignore[arg-type]
    with pytest.raises(OutputUnwritableError, match="no_such_dir"):
        OutputWriter(tmp_path / "no_such_dir" / "o.jsonl")
    with pytest.raises(OutputUnwritableError):
        OutputWriter(tmp_path)  # a directory
    assert not (tmp_path / "o.jsonl").exists()


def test_stdout_dash(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with OutputWriter("-") as writer:
        writer.write({"id": "a", "text": "é"})
    assert capsysbinary.readouterr().out == '{"id":"a","text":"é"}\n'.encode()
