"""Numbers a user reads off the output: cached_tokens in usage, and the nucleus that top_p keeps."""

from __future__ import annotations

import math

import torch

from batchcli.cli import app
from batchcli.engine.sampler import Sampler
from batchcli.params import SamplingParams
from test_cli import lines, model, runner, write_input  # noqa: F401 - model is a fixture


def test_cached_tokens_count_the_shared_prefix(tmp_path, model):
    rows = [{"id": f"r{i}", "prompt_token_ids": [5] * 12 + [9 + i], "max_tokens": 2} for i in range(4)]
    rows.append({"id": "solo", "prompt_token_ids": [40, 41, 42], "max_tokens": 2})
    src = write_input(tmp_path / "in.jsonl", rows)
    for sharing, shared in (("multi", 12), ("off", 0)):
        res = runner.invoke(app, ["run", src, "-o", "-", "--model", model, "--quiet", "--block-size", "4",
                                  "--sharing", sharing])
        assert res.exit_code == 0, res.stderr
        cached = {r["id"]: r["usage"]["cached_tokens"] for r in lines(res.stdout)}
        assert cached == {"r0": shared, "r1": shared, "r2": shared, "r3": shared, "solo": 0}, sharing


def test_top_p_keeps_the_token_that_crosses_it():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])  # cumulative 0.5, 0.8, 1.0
    sampler = Sampler(0)
    for top_p, nucleus in ((0.6, {0, 1}), (0.85, {0, 1, 2}), (0.4, {0})):
        params = [SamplingParams(temperature=1.0, top_p=top_p)]
        draws = {sampler.sample(logits, params, [i], [0])[0] for i in range(300)}
        assert draws == nucleus, top_p
