"""Per-step cost of structured outputs: the Decoder's step (processing, masks, sampling) with and without
a JSON-schema constraint on every row, on the default model's tokenizer and vocabulary, with random
logits standing in for the model (the model's own cost is not part of what constraints add).

    python -m benchmarks.constraint_bench [--rows 1 16 64] [--steps 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import orjson
import torch

from batchcli.engine.decoding import Decoder
from batchcli.engine.sampler import Sampler
from batchcli.grammars import compile_constraints
from batchcli.models import default_model_dir
from batchcli.requests import Constraint, InputFormat, Request, SamplingParams
from batchcli.tokenize import PromptTokenizer, TokenizedRequests
from batchcli.tokens import TokenArrays

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


def _step_ms(decoder: Decoder, params: SamplingParams, rows: int, steps: int, vocab: int) -> float:
    """Mean wall time of one Decoder step over `rows` greedy rows, in ms (the first, warm-up step not counted:
    it pays one-off imports and the grammar's lazy lexer set-up)."""
    generated: list[list[int]] = [[] for _ in range(rows)]
    prompts = [np.zeros(1, dtype=np.int32)] * rows
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for step in range(steps + 1):
        logits = torch.randn(rows, vocab, generator=gen)
        started = time.perf_counter()
        draws = decoder.sample(logits, [params] * rows, list(range(rows)), [0] * rows, generated, prompts)
        total += (time.perf_counter() - started) * (step > 0)
        for g, d in zip(generated, draws):
            g.append(d.token)
    return 1e3 * total / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    model_dir = default_model_dir()
    tokenizer = PromptTokenizer(model_dir)
    constraint = Constraint("json_schema", orjson.dumps(SCHEMA, option=orjson.OPT_SORT_KEYS).decode())
    constrained = SamplingParams(max_tokens=10_000, constraint=constraint)
    batch = TokenizedRequests([Request("b", 1, InputFormat.SIMPLE, constrained, prompt="")],
                              TokenArrays.from_lists([[1]]), [])
    started = time.perf_counter()
    _, grammars = compile_constraints(batch, tokenizer, lambda: (2,))
    print(f"tokenizer + compile: {time.perf_counter() - started:.2f} s (once per job; the compile once per schema)")
    vocab = tokenizer.vocab_size
    for rows in args.rows:
        plain = _step_ms(Decoder(Sampler(0), None, frozenset({2})), SamplingParams(max_tokens=10_000), rows,
                         args.steps, vocab)
        guided = _step_ms(Decoder(Sampler(0), grammars, frozenset({2})), constrained, rows, args.steps, vocab)
        print(f"{rows:3d} rows: step {plain:6.2f} ms unconstrained, {guided:6.2f} ms constrained: "
              f"+{guided - plain:.2f} ms per step, +{(guided - plain) / rows:.3f} ms per constrained row")


if __name__ == "__main__":
    main()
