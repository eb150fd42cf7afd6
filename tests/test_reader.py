"""Reader tests: every line format, every error code with its line number, streaming edge cases."""

from __future__ import annotations

import io
import sys
import tracemalloc
from pathlib import Path

import orjson
import pytest

from batchcli.formats.openai_body import OPENAI_DEFAULTS
from batchcli.io.reader import InputUnreadableError, read_requests
from batchcli.requests import InputFormat, LineError, Request
from batchcli.params import SamplingParams

DEFAULTS = SamplingParams(max_tokens=32, temperature=0.5, stop=("###",))


def write_lines(tmp_path: Path, lines: list[bytes | str | dict], *, eol: bytes = b"\n") -> Path:
    path = tmp_path / "in.jsonl"
    raw = [orjson.dumps(x) if isinstance(x, dict) else x.encode() if isinstance(x, str) else x for x in lines]
    path.write_bytes(b"".join(r + eol for r in raw))
    return path


def read_all(tmp_path: Path, lines: list, **kwargs) -> list[Request | LineError]:
    return list(read_requests(write_lines(tmp_path, lines), DEFAULTS, **kwargs))


def test_simple_line_takes_defaults_and_overrides(tmp_path: Path) -> None:
    got = read_all(tmp_path, [
        {"id": "a", "prompt": "hi"},
        {"id": "b", "prompt": "yo", "max_tokens": 7, "temperature": 0, "top_p": 0.9, "top_k": 5,
         "seed": 3, "stop": "\n", "n": 2, "ignore_eos": True},
        {"id": "c", "prompt": "x", "stop": ["a", "b"], "seed": None},
    ])
    assert got[0] == Request("a", 1, InputFormat.SIMPLE, DEFAULTS, prompt="hi")
    assert got[0].params is DEFAULTS
    assert got[1].params == SamplingParams(max_tokens=7, temperature=0.0, top_p=0.9, top_k=5, seed=3,
                                           stop=("\n",), n=2, ignore_eos=True)
    assert got[2].params == SamplingParams(max_tokens=32, temperature=0.5, stop=("a", "b"))


def test_chat_and_token_lines(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    got = read_all(tmp_path, [{"id": 7, "messages": messages}, {"prompt_token_ids": [1, 0, 5], "max_tokens": 3}])
    assert got[0] == Request("7", 1, InputFormat.CHAT, DEFAULTS, messages=tuple(messages))
    assert got[1] == Request("line-2", 2, InputFormat.TOKENS, SamplingParams(max_tokens=3, temperature=0.5, stop=("###",)), prompt_token_ids=(1, 0, 5))


# (line, expected code, words the message must contain)
BAD_LINES = [
    (b'{"id": "x", "prompt": ', "invalid_json", ["JSON"]),
    (b"[1, 2]", "not_an_object", ["[1,2]"]),
    (b'{"id": "x2", "max_tokens": 4}', "missing_prompt", ["exactly one"]),
    (b'{"id": "x3", "prompt": "a", "messages": []}', "missing_prompt", ["got 2"]),
    (b'{"id": "x4", "prompt": 5}', "invalid_type", ["prompt", "5"]),
    (b'{"id": "x5", "prompt": "a", "max_tokens": "64"}', "invalid_type", ["max_tokens", '"64"']),
    (b'{"id": "x6", "prompt": "a", "max_tokens": 0}', "invalid_value", ["max_tokens", "0"]),
    (b'{"id": "x7", "prompt": "a", "temperature": -1}', "invalid_value", ["temperature", "-1"]),
    (b'{"id": "x8", "prompt": "a", "top_p": 1.5}', "invalid_value", ["top_p", "1.5"]),
    (b'{"id": "x9", "prompt": "a", "top_k": -2}', "invalid_value", ["top_k", "-2"]),
    (b'{"id": "x10", "prompt": "a", "n": 0}', "invalid_value", ["n", "0"]),
    (b'{"id": "x11", "prompt": ""}', "empty_prompt", ["prompt"]),
    (b'{"id": "x12", "messages": []}', "empty_prompt", ["messages"]),
    (b'{"id": "x13", "prompt_token_ids": []}', "empty_prompt", ["prompt_token_ids"]),
    (b'{"id": "x14", "prompt_token_ids": [1, -3]}', "invalid_value", ["prompt_token_ids[1]", "-3"]),
    (b'{"id": "x15", "prompt_token_ids": [1, 2.5]}', "invalid_type", ["prompt_token_ids[1]", "2.5"]),
    (b'{"id": "x16", "messages": [{"role": "user", "content": 3}]}', "invalid_type", ["messages[0].content"]),
    (b'{"id": "x17", "messages": [{"role": "user"}]}', "invalid_type", ["messages[0].content", "null"]),
    (b'{"id": "x18", "messages": [{"role": "user", "content": "a", "nmae": 1}]}', "unknown_field", ["nmae"]),
    (b'{"id": "x19", "prompt": "a", "max_token": 5}', "unknown_field", ["max_token"]),
    (b'{"id": "x20", "prompt": "a", "stop": ["ok", 1]}', "invalid_type", ["stop"]),
    (b'{"id": "x21", "prompt": "a", "stop": ""}', "invalid_value", ["stop"]),
    (b'{"id": "x22", "prompt": "a", "ignore_eos": 1}', "invalid_type", ["ignore_eos"]),
    (b'{"id": "x23", "prompt": "a", "temperature": "hot"}', "invalid_type", ["temperature"]),
    (b'{"id": true, "prompt": "a"}', "invalid_type", ["id", "true"]),
    (b'{"id": "x25", "prompt": "caf\xe9"}', "invalid_encoding", ["UTF-8", "byte"]),
    (b'{"id": "x26", "prompt": "a", "n": true}', "invalid_type", ["n", "true"]),
]


@pytest.mark.parametrize(("raw", "code", "words"), BAD_LINES, ids=[c + str(i) for i, (_, c, _) in enumerate(BAD_LINES)])
def test_each_bad_line_gets_its_code_and_line_and_reading_goes_on(tmp_path: Path, raw: bytes, code: str,
                                                                  words: list[str]) -> None:
    got = read_all(tmp_path, [{"id": "before", "prompt": "p"}, b"", raw, {"id": "after", "prompt": "q"}])
    assert [type(x) for x in got] == [Request, LineError, Request]
    err = got[1]
    assert (err.code, err.line) == (code, 3), err
    for word in words:
        assert word in err.message, (word, err.message)
    assert (got[0].id, got[0].line, got[2].id, got[2].line) == ("before", 1, "after", 4)


def test_error_ids_name_the_line_when_the_line_has_no_usable_id(tmp_path: Path) -> None:
    got = read_all(tmp_path, [b"{oops", {"id": "k", "prompt": ""}, {"id": [1], "prompt": "a"}])
    assert [(e.id, e.line, e.custom_id) for e in got] == [("line-1", 1, None), ("k", 2, None), ("line-3", 3, None)]


def test_duplicate_ids_error_on_second_and_later(tmp_path: Path) -> None:
    got = read_all(tmp_path, [
        {"id": "q", "prompt": "a"}, {"id": "r", "prompt": "b"}, {"id": "q", "prompt": "c"},
        {"id": 5, "prompt": "d"}, {"id": "5", "prompt": "e"}, {"id": "q", "prompt": "f"},
    ])
    assert [type(x).__name__ for x in got] == ["Request", "Request", "LineError", "Request", "LineError", "LineError"]
    assert [(got[i].code, got[i].line, got[i].id) for i in (2, 4, 5)] == [
        ("duplicate_id", 3, "q"), ("duplicate_id", 5, "5"), ("duplicate_id", 6, "q")]
    assert "line 1" in got[5].message


def test_bom_crlf_and_blank_lines_keep_physical_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "x"}\r\n\r\n   \r\n{"id": "b", "prompt": "y\\r\\n"}\r\n')
    got = list(read_requests(path, DEFAULTS))
    assert [(r.id, r.line, r.prompt) for r in got] == [("a", 1, "x"), ("b", 4, "y\r\n")]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "x"}\n{"prompt": "y"}')
    assert [r.prompt for r in read_requests(path, DEFAULTS)] == ["x", "y"]


def test_huge_line_is_skipped_not_held(tmp_path: Path) -> None:
    limit = 100
    frame = len(orjson.dumps({"id": "fit", "prompt": ""}))
    fits = orjson.dumps({"id": "fit", "prompt": "p" * (limit - frame)})  # exactly at the limit
    huge = orjson.dumps({"id": "big", "prompt": "z" * (3 << 20)})  # spans several read chunks
    path = tmp_path / "in.jsonl"
    path.write_bytes(fits + b"\r\n" + huge + b"\n" + fits.replace(b"fit", b"fi2") + b"\n" + huge)
    got = list(read_requests(path, DEFAULTS, max_line_bytes=limit))
    assert [(x.id, x.line, type(x).__name__) for x in got] == [
        ("fit", 1, "Request"), ("line-2", 2, "LineError"), ("fi2", 3, "Request"), ("line-4", 4, "LineError")]
    assert got[1].code == got[3].code == "line_too_long"


class EndlessLine(io.RawIOBase):
    """`size` bytes of one line without a newline, made on demand, then a good line."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.tail = b'\n{"id": "after", "prompt": "ok"}\n'

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        if self.left:
            n = min(len(buffer), self.left)
            buffer[:n] = b"z" * n
            self.left -= n
            return n
        n = len(self.tail)
        buffer[:n], self.tail = self.tail, b""
        return n


def test_huge_line_memory_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(EndlessLine(24 << 20))))
    tracemalloc.start()
    try:
        got = list(read_requests("-", DEFAULTS, max_line_bytes=1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(x.id, x.line) for x in got] == [("line-1", 1), ("after", 2)]
    assert peak < 8 << 20, f"peak {peak} bytes: the 24 MiB line was held"


def test_one_byte_over_the_limit_is_too_long(tmp_path: Path) -> None:
    line = orjson.dumps({"prompt": "p" * 20})
    got = list(read_requests(write_lines(tmp_path, [line]), DEFAULTS, max_line_bytes=len(line) - 1))
    assert [e.code for e in got] == ["line_too_long"]


def test_stdin_dash_reads_binary_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b'{"id": "s1", "prompt": "from stdin"}\n{bad\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    got = list(read_requests("-", DEFAULTS))
    assert got[0] == Request("s1", 1, InputFormat.SIMPLE, DEFAULTS, prompt="from stdin")
    assert (got[1].code, got[1].line) == ("invalid_json", 2)


def test_missing_input_fails_at_call(tmp_path: Path) -> None:
    with pytest.raises(InputUnreadableError, match="nope.jsonl"):
        read_requests(tmp_path / "nope.jsonl", DEFAULTS)


def openai_line(url: str, body: dict, custom_id: object = "r1", **top: object) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body, **top}


def test_openai_completions_and_chat(tmp_path: Path) -> None:
    got = read_all(tmp_path, [
        openai_line("/v1/completions", {"model": "m1", "prompt": "hello", "max_tokens": 9, "stream": False,
                                        "top_k": 4, "ignore_eos": True, "presence_penalty": 0, "user": "u"}),
        openai_line("/v1/completions", {"prompt": [5, 6]}, custom_id="r2"),
        openai_line("/v1/chat/completions", {"model": "m2", "messages": [{"role": "user", "content": "q"}],
                                             "max_tokens": 5, "max_completion_tokens": 11, "seed": 2}, custom_id=3),
    ])
    # OpenAI lines start from OpenAI's defaults (temperature 1, no max_tokens), not the plain lines' ones
    assert got[0] == Request("r1", 1, InputFormat.OPENAI_COMPLETION,
                             SamplingParams(max_tokens=9, temperature=1.0, top_k=4, ignore_eos=True),
                             prompt="hello", custom_id="r1")
    assert got[0].model == "m1"
    assert got[1] == Request("r2", 2, InputFormat.OPENAI_COMPLETION, OPENAI_DEFAULTS, prompt_token_ids=(5, 6),
                             custom_id="r2")
    assert got[1].model is None
    assert got[2] == Request("3", 3, InputFormat.OPENAI_CHAT, SamplingParams(max_tokens=11, temperature=1.0, seed=2),
                             messages=({"role": "user", "content": "q"},), custom_id="3")
    assert got[2].model == "m2"


OPENAI_BAD = [
    (openai_line("/v1/moderations", {"input": "x"}), "unsupported", ["url"]),
    ({**openai_line("/v1/completions", {"prompt": "x"}), "method": "GET"}, "unsupported", ["method", "GET"]),
    (openai_line("/v1/completions", {"prompt": "x", "stream": True}), "unsupported", ["stream", "true"]),
    (openai_line("/v1/completions", {"prompt": "x", "logprobs": 6}), "invalid_value", ["logprobs", "6"]),
    (openai_line("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5}),
     "invalid_value", ["presence_penalty", "2.5"]),
    (openai_line("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
     "invalid_value", ["top_logprobs", "logprobs"]),
    (openai_line("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True,
                                          "top_logprobs": 21}), "invalid_value", ["logprobs", "21"]),
    (openai_line("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), "invalid_value", ["stop", "4"]),
    (openai_line("/v1/completions", {"prompt": "x", "temperature": 2.5}), "invalid_value", ["temperature", "2.5"]),
    (openai_line("/v1/completions", {"prompt": "x", "response_format": {"type": "yaml"}}), "unsupported", ["yaml"]),
    (openai_line("/v1/completions", {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
        "schema": {}, "strict": True, "extra": 1}}}), "unknown_field", ["extra"]),
    (openai_line("/v1/completions", {"prompt": "x", "logit_bias": {"a": 1}}), "invalid_value", ["logit_bias", "'a'"]),
    (openai_line("/v1/completions", {"prompt": "x", "logit_bias": {"5": 101}}), "invalid_value", ["logit_bias", "101"]),
    (openai_line("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
     "unsupported", ["content[0]"]),
    (openai_line("/v1/completions", {"prompt": ["a", "b"]}), "unsupported", ["body.prompt"]),
    (openai_line("/v1/completions", {"prompt": "x", "temprature": 1}), "unknown_field", ["temprature"]),
    (openai_line("/v1/completions", {"prompt": "x"}, extra=1), "unknown_field", ["extra"]),
    (openai_line("/v1/chat/completions", {"prompt": "x"}), "unknown_field", ["body.prompt"]),
    (openai_line("/v1/chat/completions", {"max_tokens": 3}), "missing_prompt", ["body.messages"]),
    (openai_line("/v1/completions", {}), "missing_prompt", ["body.prompt"]),
    (openai_line("/v1/completions", "x"), "invalid_type", ["body"]),
    (openai_line("/v1/completions", {"prompt": "x", "model": 3}), "invalid_type", ["body.model"]),
    (openai_line("/v1/completions", {"prompt": "x", "top_p": 0}), "invalid_value", ["top_p", "0"]),
    (openai_line("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                          "max_completion_tokens": "9"}), "invalid_type", ["max_completion_tokens"]),
    (openai_line("/v1/completions", {"prompt": ""}), "empty_prompt", ["body.prompt"]),
]


@pytest.mark.parametrize(("line", "code", "words"), OPENAI_BAD, ids=[c + str(i) for i, (_, c, _) in enumerate(OPENAI_BAD)])
def test_openai_errors_carry_custom_id(tmp_path: Path, line: dict, code: str, words: list[str]) -> None:
    got = read_all(tmp_path, [line, openai_line("/v1/completions", {"prompt": "ok"}, custom_id="good")])
    err = got[0]
    assert isinstance(err, LineError)
    assert (err.code, err.line, err.id, err.custom_id) == (code, 1, "r1", "r1"), err
    for word in words:
        assert word in err.message, (word, err.message)
    assert isinstance(got[1], Request) and got[1].custom_id == "good"


def test_openai_line_with_bad_custom_id_still_gets_openai_error(tmp_path: Path) -> None:
    got = read_all(tmp_path, [openai_line("/v1/completions", {"prompt": "x"}, custom_id=1.5)])
    assert (got[0].code, got[0].id, got[0].custom_id, got[0].openai) == ("invalid_type", "line-1", None, True)


def test_plain_lines_take_every_sampling_and_constraint_field(tmp_path: Path) -> None:
    from batchcli.params import Constraint

    got = read_all(tmp_path, [
        {"id": "a", "prompt": "x", "min_p": 0.1, "presence_penalty": -0.5, "frequency_penalty": 1, "min_tokens": 2,
         "repetition_penalty": 1.2, "logit_bias": {"7": 5, "3": -100}, "stop_token_ids": [4, 9], "logprobs": 3,
         "json_schema": {"type": "object", "required": ["b", "a"]}},
        {"id": "b", "prompt": "x", "regex": "[0-9]+"},
        {"id": "c", "prompt": "x", "choice": ["yes", "no"]},
        {"id": "d", "prompt": "x", "regex": "a", "choice": ["a"]},
        {"id": "e", "prompt": "x", "choice": []},
        {"id": "f", "prompt": "x", "logit_bias": [1, 2]},
        {"id": "g", "prompt": "x", "stop_token_ids": [1, True]},
        {"id": "h", "prompt": "x", "min_tokens": 40},
    ])
    assert got[0].params == SamplingParams(
        max_tokens=32, temperature=0.5, stop=("###",), min_p=0.1, presence_penalty=-0.5, frequency_penalty=1.0,
        min_tokens=2, repetition_penalty=1.2, logit_bias=((3, -100.0), (7, 5.0)), stop_token_ids=(4, 9), logprobs=3,
        constraint=Constraint("json_schema", '{"type":"object","required":["b","a"]}'))
    assert got[1].params.constraint == Constraint("regex", "[0-9]+")
    assert got[2].params.constraint == Constraint("choice", '["yes","no"]')
    assert [(e.code, e.id) for e in got[3:]] == [("invalid_value", "d"), ("invalid_type", "e"), ("invalid_type", "f"),
                                                ("invalid_type", "g"), ("invalid_value", "h")]
    assert "min_tokens" in got[7].message and "40" in got[7].message


def test_openai_logprobs_and_response_format(tmp_path: Path) -> None:
    from batchcli.params import Constraint

    msgs = [{"role": "user", "content": "x"}]
    schema_a = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "string"}}}
    schema_b = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "string"}}}
    got = read_all(tmp_path, [
        openai_line("/v1/chat/completions", {"messages": msgs, "logprobs": True, "top_logprobs": 3}, custom_id="a"),
        openai_line("/v1/chat/completions", {"messages": msgs, "logprobs": True}, custom_id="b"),
        openai_line("/v1/chat/completions", {"messages": msgs, "logprobs": False}, custom_id="c"),
        openai_line("/v1/completions", {"prompt": "x", "logprobs": 2}, custom_id="d"),
        openai_line("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {
            "name": "n", "strict": True, "schema": schema_a}}}, custom_id="e"),
        openai_line("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {
            "name": "n", "schema": schema_b}}}, custom_id="f"),
        openai_line("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "json_object"}}, custom_id="g"),
        openai_line("/v1/chat/completions", {"messages": msgs, "response_format": {"type": "text"}}, custom_id="h"),
    ])
    assert [r.params.logprobs for r in got[:4]] == [3, 0, None, 2]
    assert got[4].params.constraint == got[5].params.constraint  # one grammar for both
    # properties keep the user's order: it is the order the output writes them in
    assert got[4].params.constraint.spec == '{"type":"object","properties":{"b":{"type":"string"},"a":{"type":"string"}}}'
    assert got[6].params.constraint == Constraint("json_object", "") and got[7].params.constraint is None


def test_openai_lines_check_the_served_model(tmp_path: Path) -> None:
    got = read_all(tmp_path, [openai_line("/v1/completions", {"prompt": "x", "model": "smol"}, custom_id="a"),
                              openai_line("/v1/completions", {"prompt": "x", "model": "gpt-4o"}, custom_id="b"),
                              openai_line("/v1/completions", {"prompt": "x"}, custom_id="c")],
                   served_model="smol")
    assert isinstance(got[0], Request) and isinstance(got[2], Request)
    assert (got[1].code, got[1].custom_id) == ("model_not_found", "b") and "'smol'" in got[1].message


def test_cli_flags_override_both_defaults() -> None:
    from batchcli.cli import _defaults

    plain, openai = _defaults(temperature=0.0, top_k=0, max_tokens=None, stop=["x"], ignore_eos=False)
    assert (plain.temperature, openai.temperature) == (0.0, 0.0)  # an explicit 0 is a value, not "not given"
    assert (plain.max_tokens, openai.max_tokens) == (256, None) and openai.stop == ("x",)
    plain, openai = _defaults(temperature=None)
    assert (plain.temperature, openai.temperature) == (0.0, 1.0)
