"""The front half as one library call: read -> tokenize -> plan, shared by `plan` and `run`.

Invariant: the fingerprint covers exactly what a plan depends on (the tokenized prompts, request ids,
output budgets, tokenizer identity and plan settings), so a plan is accepted only for the data it was
made from; it is computed over the whole input, before `--resume` drops answered requests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from batchcli.errors import InputError, PlanFileError
from batchcli.grammars import Grammars, compile_constraints
from batchcli.plan import Plan, PlanMismatchError, PlanSettings, build_plan, check_fingerprint, plan_from_json
from batchcli.reader import OPENAI_DEFAULTS, read_requests
from batchcli.requests import LineError, Request, SamplingParams
from batchcli.tokenize import PromptTokenizer, TokenizedRequests, tokenize_requests
from batchcli.tokens import TokenArrays


@dataclass(frozen=True, slots=True)
class PreparedJob:
    model_dir: Path
    tokenizer: PromptTokenizer
    batch: TokenizedRequests  # valid requests still to run, their tokens, and error lines to report
    plan: Plan
    skipped: int  # requests and error lines already answered in the output (--resume)
    grammars: Grammars | None = None  # compiled output constraints, None when no request has one


def fingerprint(batch: TokenizedRequests, tokenizer_identity: str, settings: PlanSettings) -> str:
    h = hashlib.sha256()
    h.update(f"{tokenizer_identity}|{settings.block_size}|{settings.sharing}|".encode())
    h.update(batch.tokens.offsets.tobytes())
    h.update(batch.tokens.flat.tobytes())
    for r in batch.requests:
        h.update(f"{r.id}\x00{r.params.max_tokens}\x00{r.params.n}\x01".encode())
    return "sha256:" + h.hexdigest()


def _params_arrays(requests: list[Request]) -> tuple[np.ndarray, np.ndarray]:
    max_tokens = np.fromiter((r.params.max_tokens for r in requests), dtype=np.int64, count=len(requests))
    n = np.fromiter((r.params.n for r in requests), dtype=np.int64, count=len(requests))
    return max_tokens, n


def plan_for(batch: TokenizedRequests, settings: PlanSettings, model: str, fp: str) -> Plan:
    max_tokens, n = _params_arrays(batch.requests)
    return build_plan(batch.tokens, max_tokens, n, settings, model=model, fingerprint=fp, errors=len(batch.errors))


def _without(batch: TokenizedRequests, done: set[str]) -> tuple[TokenizedRequests, int]:
    keep = [i for i, r in enumerate(batch.requests) if r.id not in done]
    errors = [e for e in batch.errors if e.id not in done and (e.custom_id or e.id) not in done]
    skipped = len(batch.requests) - len(keep) + len(batch.errors) - len(errors)
    tokens = TokenArrays.from_lists([batch.tokens[i] for i in keep])
    return TokenizedRequests([batch.requests[i] for i in keep], tokens, errors), skipped


def _read(source: str, defaults: SamplingParams, openai_defaults: SamplingParams,
          served_model: str | None) -> Iterable[Request | LineError]:
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input file {source} does not exist")
    try:
        yield from read_requests(source, defaults, openai_defaults=openai_defaults, served_model=served_model)
    except OSError as e:
        raise InputError(f"cannot read input {source}: {e.strerror or e}") from None


def _eos_ids(model_dir: Path) -> tuple[int, ...]:
    from batchcli.engine.weights import eos_token_ids  # torch: imported only when a constraint needs it

    return eos_token_ids(model_dir)


def prepare(
    source: str, defaults: SamplingParams, settings: PlanSettings, model_dir: Path, *,
    plan_file: Path | None = None, done_ids: set[str] | None = None,
    openai_defaults: SamplingParams = OPENAI_DEFAULTS, served_model: str | None = None,
) -> PreparedJob:
    """Read, tokenize and plan `source` (a path or "-"); skip `done_ids` (already answered).

    OpenAI lines start from `openai_defaults` and must name `served_model` (when given) as body.model.
    """
    tokenizer = PromptTokenizer(model_dir)
    batch = tokenize_requests(_read(source, defaults, openai_defaults, served_model), tokenizer)
    batch, grammars = compile_constraints(batch, tokenizer, lambda: _eos_ids(model_dir))
    fp = fingerprint(batch, tokenizer.identity(), settings)
    if plan_file is not None:
        plan = load_plan(plan_file, fp)
        settings = plan.settings
    else:
        plan = plan_for(batch, settings, model_dir.name, fp)
    skipped = 0
    if done_ids:
        batch, skipped = _without(batch, done_ids)
        plan = plan_for(batch, settings, model_dir.name, fp)
    return PreparedJob(model_dir, tokenizer, batch, plan, skipped, grammars)


def load_plan(path: Path, fp: str) -> Plan:
    try:
        plan = plan_from_json(Path(path).read_bytes())
        check_fingerprint(plan, fp)
    except OSError as e:
        raise PlanFileError(f"cannot read plan file {path}: {e.strerror or e}") from None
    except PlanMismatchError:
        raise PlanFileError(f"plan file {path} was made for other data, another tokenizer or other settings; "
                            "make a new one with `batchllm plan`") from None
    except ValueError as e:
        raise PlanFileError(f"plan file {path} is not a valid plan: {e}") from None
    return plan
