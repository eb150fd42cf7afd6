"""Per-step cost of structured outputs: what a JSON-schema constraint adds to each decode step (filling
the rows' bitmasks, applying them to the logits, advancing the matchers), on the default model's
tokenizer and vocabulary. Each row is driven along a real, valid JSON document (as a model following
the schema would write it), so the grammar states are the ones real outputs visit.

    python -m benchmarks.constraint_bench [--rows 1 16 64]
"""

from __future__ import annotations

import argparse
import json
import time

import orjson
import torch

from batchcli.engine.constraints import Guides
from batchcli.planning.grammars import compile_constraints
from batchcli.model_store import default_model_dir
from batchcli.requests import InputFormat, Request
from batchcli.params import Constraint, SamplingParams
from batchcli.planning.tokenize import PromptTokenizer, TokenizedRequests
from batchcli.planning.token_arrays import TokenArrays

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}},
                                           "note": {"type": "string"}},
          "required": ["name", "age", "tags", "note"], "additionalProperties": False}
NAMES = ["Alice Smith", "Bob", "Carol de la Vega", "Dmitri Ivanov", "Eve", "Fran O'Neil", "Gao Yan", "Hugo"]


def _documents(tokenizer: PromptTokenizer, rows: int) -> list[list[int]]:
    """A valid instance per row, written as the grammar writes JSON (", " and ": "), tokenized."""
    docs = []
    for i in range(rows):
        value = {"name": NAMES[i % len(NAMES)], "age": 20 + i, "tags": ["red", "blue"][: 1 + i % 2],
                 "note": f"customer number {i} asked about the delivery of order {1000 + 7 * i}"}
        docs.append(tokenizer.tok(json.dumps(value), add_special_tokens=False)["input_ids"])
    return docs


def measure(tokenizer: PromptTokenizer, rows: int) -> tuple[float, float, int]:
    """Mean wall and CPU ms per step that the constraint adds for `rows` rows, and the steps timed."""
    constraint = Constraint("json_schema", orjson.dumps(SCHEMA).decode())
    params = SamplingParams(max_tokens=10_000, constraint=constraint)
    batch = TokenizedRequests([Request("b", 1, InputFormat.SIMPLE, params, prompt="")], TokenArrays.from_lists([[1]]), [])
    _, grammars = compile_constraints(batch, tokenizer, lambda: (2,))
    guides = Guides(grammars)
    docs = _documents(tokenizer, rows)
    steps = min(len(d) for d in docs)
    wall = cpu = 0.0
    for step in range(steps):
        logits = torch.zeros(rows, tokenizer.vocab_size)  # [R, V]
        started, started_cpu = time.perf_counter(), time.process_time()
        guides.mask_(logits, [params] * rows, list(range(rows)))
        for r, doc in enumerate(docs):
            refused = guides.advance(r, params, doc[step])
            assert refused is None, refused
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        assert all(logits[r, doc[step]] == 0 for r, doc in enumerate(docs)), "the mask refused a valid token"
    return 1e3 * wall / steps, 1e3 * cpu / steps, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine a parallel op waits for its slowest, starved thread)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = PromptTokenizer(default_model_dir())
    started = time.perf_counter()
    measure(tokenizer, 1)  # warm-up: imports, the llguidance tokenizer
    print(f"warm-up (tokenizer set-up, compile, one document): {time.perf_counter() - started:.2f} s")
    for rows in args.rows:
        wall, cpu, steps = measure(tokenizer, rows)
        print(f"{rows:3d} rows x {steps} steps: +{wall:.2f} ms wall / +{cpu:.2f} ms CPU per step "
              f"(+{cpu / rows:.3f} ms CPU per constrained row)")


if __name__ == "__main__":
    main()
