"""Stop rules: EOS (unless ignored), stop strings cut the text, max_tokens gives "length"."""

from __future__ import annotations

from batchcli.engine.stopping import StopChecker
from batchcli.params import SamplingParams

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


def test_stop_token_ids_stop_and_are_the_stop_reason():
    checker = StopChecker(decode, frozenset({9}))
    p = SamplingParams(max_tokens=10, stop_token_ids=(5,), ignore_eos=True)
    done = checker.check([1, 5], p)
    assert (done.finish_reason, done.stop_reason, done.text) == ("stop", 5, "Hello!")
    assert checker.check([1, 9], SamplingParams(max_tokens=5)).stop_reason is None  # EOS: null


def test_stop_string_is_the_stop_reason():
    done = StopChecker(decode, frozenset({9})).check([1, 2, 3], SamplingParams(max_tokens=10, stop=("xyz", ",")))
    assert (done.text, done.stop_reason) == ("Hello", ",")


def test_nothing_but_length_stops_before_min_tokens():
    checker = StopChecker(decode, frozenset({9}))
    p = SamplingParams(max_tokens=4, min_tokens=3, stop=(",",), stop_token_ids=(5,))
    assert checker.check([1, 2], p) is None  # the stop string is there, but only 2 tokens
    assert checker.check([1, 9], p) is None
    assert checker.check([1, 3, 2], p).stop_reason == ","
    assert checker.check([3, 3, 3, 3], p).finish_reason == "length"
