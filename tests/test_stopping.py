"""Stop rules: EOS (unless ignored), stop strings cut the text, max_tokens gives "length"."""

from __future__ import annotations

from batchcli.engine.stopping import StopChecker
from batchcli.requests import SamplingParams

WORDS = {1: "Hello", 2: ",", 3: " world", 4: "\n", 5: "!", 9: ""}


def decode(ids):
    return "".join(WORDS[i] for i in ids)


def test_eos_stops_unless_ignored():
    checker = StopChecker(decode, frozenset({9}))
    done = checker.check([1, 9], SamplingParams(max_tokens=5))
    assert (done.finish_reason, done.text, done.token_ids) == ("stop", "Hello", (1, 9))
    assert checker.check([1, 9], SamplingParams(max_tokens=5, ignore_eos=True)) is None


def test_stop_string_cuts_before_it():
    checker = StopChecker(decode, frozenset({9}))
    p = SamplingParams(max_tokens=10, stop=("\n", " wor"))
    assert checker.check([1, 2], p) is None
    done = checker.check([1, 2, 3], p)
    assert (done.finish_reason, done.text) == ("stop", "Hello,")


def test_max_tokens_is_length():
    checker = StopChecker(decode, frozenset({9}))
    assert checker.check([1, 2], SamplingParams(max_tokens=3)) is None
    done = checker.check([1, 2, 5], SamplingParams(max_tokens=3))
    assert (done.finish_reason, done.text) == ("length", "Hello,!")
