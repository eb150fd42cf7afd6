"""The front half as one library call: read -> tokenize -> plan, shared by `plan` and `run`.

Invariants: the fingerprint covers exactly what a plan depends on (the tokenized prompts, request ids,
output budgets, tokenizer identity and plan settings), so a plan is accepted only for the data it was
made from (computed with a plan file's own settings, which the job then uses); a loaded plan is also checked to be the plan of these prompts, so an edited one is refused.
The job identity covers what the answers depend on (every line's outcome, parameters, prompt tokens,
pooling, and the model), tying an output to its job. Both are computed over the whole input, before `--resume`
drops answered requests. No two records of a job carry the same id: an error line whose id a valid
line (or an earlier error line) holds is renamed `line-N`.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable


from batchcli.planning.shard import Shard, plan_requests
from batchcli.errors import InputError, PlanFileError, UsageError
from batchcli.planning.grammars import Grammars, compile_constraints
from batchcli.planning.plan import Plan, PlanMismatchError, PlanSettings, check_fingerprint, plan_from_json
from batchcli.formats.openai_body import OPENAI_DEFAULTS
from batchcli.model_config import eos_token_ids
from batchcli.io.reader import InputOptions, read_requests
from batchcli.model_tasks import ModelTasks, model_tasks
from batchcli.parts import whole_lines
from batchcli.requests import LineError, Request
from batchcli.params import SamplingParams
from batchcli.planning.tokenize import PromptTokenizer, TokenizedRequests, tokenize_requests
from batchcli.planning.token_arrays import TokenArrays
from batchcli.io.writer import Answered


@dataclass(frozen=True, slots=True)
class PreparedJob:
    model_dir: Path
    tokenizer: PromptTokenizer
    tokenized: TokenizedRequests  # valid requests still to run, their tokens, and error lines to report
    plan: Plan
    skipped: int  # requests and error lines already answered in the output (--resume)
    identity: str = ""  # the job identity (see the module docstring), over the whole input; "" if not from prepare()
    grammars: Grammars | None = None  # compiled output constraints, None when no request has one
    tokenizer_load_s: float = 0.0  # loading the tokenizer (transformers' import included): start-up, not the job

    def not_jsonl(self) -> bool:
        """Whether the input is clearly no JSONL: it has lines, and not one of them is JSON."""
        errors = self.tokenized.errors
        return not self.tokenized.requests and not self.skipped and bool(errors) and all(e.code == "invalid_json" for e in errors)

    def shard(self) -> Shard:
        """The whole job as the engine's input (request i of the shard = request i of `tokenized`)."""
        params = tuple(r.params for r in self.tokenized.requests)
        pooling = tuple(r.pooling for r in self.tokenized.requests)
        pooling = pooling if any(t is not None for t in pooling) else ()
        return Shard(tuple(range(len(params))), self.tokenized.tokens, params, self.plan, pooling)


def fingerprint(tokenized: TokenizedRequests, tokenizer_identity: str, settings: PlanSettings) -> str:
    h = hashlib.sha256()
    h.update(f"{tokenizer_identity}|{settings.block_size}|{settings.sharing}|".encode())
    h.update(tokenized.tokens.offsets.tobytes())
    h.update(tokenized.tokens.flat.tobytes())
    for r in tokenized.requests:
        h.update(f"{r.id}\x00{r.params.max_tokens}\x00{r.params.n}\x01".encode())
    return "sha256:" + h.hexdigest()


def job_identity(tokenized: TokenizedRequests, model: str) -> str:
    h = hashlib.sha256(f"{model}\x00".encode())
    h.update(tokenized.tokens.offsets.tobytes())
    h.update(tokenized.tokens.flat.tobytes())
    for r in tokenized.requests:
        h.update(f"{r.line}\x00{r.id}\x00{r.format.value}\x00{r.params!r}\x01".encode())
        if r.pooling is not None:  # a part: what it pools, and how its line is answered
            h.update(f"{r.part}\x00{r.pooling!r}\x00{r.echo!r}\x01".encode())
    for e in tokenized.errors:
        h.update(f"{e.line}\x00{e.code}\x01".encode())
    return "sha256:" + h.hexdigest()


def _unique_error_ids(tokenized: TokenizedRequests) -> TokenizedRequests:
    """Rename error lines whose id is taken, so each record's id names one line of the job."""
    taken = {r.id for r in tokenized.requests}
    errors = []
    for e in tokenized.errors:
        rid, k = e.id, 0
        while rid in taken:
            k += 1
            rid = f"line-{e.line}" if k == 1 else f"line-{e.line}.{k}"
        taken.add(rid)
        errors.append(e if rid == e.id else replace(e, id=rid, custom_id=None if e.custom_id is None else rid))
    return TokenizedRequests(tokenized.requests, tokenized.tokens, errors)


def plan_for(tokenized: TokenizedRequests, settings: PlanSettings, model: str, fp: str) -> Plan:
    params = [r.params for r in tokenized.requests]
    return plan_requests(tokenized.tokens, params, settings, model=model, fingerprint=fp, errors=len(tokenized.errors))


def _without(tokenized: TokenizedRequests, done: Answered) -> tuple[TokenizedRequests, int]:
    keep = [i for i, r in enumerate(tokenized.requests) if r.id not in done.ids and r.line not in done.lines]
    errors = [e for e in tokenized.errors if e.id not in done.ids and e.line not in done.lines]
    skipped = len(tokenized.requests) - len(keep) + len(tokenized.errors) - len(errors)
    tokens = TokenArrays.from_lists([tokenized.tokens[i] for i in keep])
    return TokenizedRequests([tokenized.requests[i] for i in keep], tokens, errors), skipped


def check_input(source: str) -> None:
    """Refuse a missing input or a directory, or "-" when the process has no stdin (started with it
    closed: `<&-`); any other file (a FIFO, /dev/stdin, `<(...)`) is read."""
    if source == "-":
        if sys.stdin is None:
            raise InputError("input is - but stdin is closed; give an input file")
        return
    path = Path(source)
    if path.is_dir():
        raise InputError(f"input {source} is a directory, not a JSONL file")
    if not path.exists():
        raise InputError(f"input file {source} does not exist")


def not_jsonl_hint(source: str) -> str:
    return (f"batchllm: {source} is not JSONL (no line is a JSON object). For one prompt per line use "
            "--input-format text (with --system TEXT for a shared system prompt), or convert it: "
            "jq -cR '{prompt: .}'")


def _read(source: str, defaults: SamplingParams, openai_defaults: SamplingParams,
          served_model: str | None, options: InputOptions, tasks: ModelTasks) -> Iterable[Request | LineError]:
    check_input(source)
    try:
        yield from read_requests(source, defaults, openai_defaults=openai_defaults, served_model=served_model,
                                 options=options, tasks=tasks)
    except OSError as e:
        raise InputError(f"cannot read input {source}: {e.strerror or e}") from None


def prepare(
    source: str, defaults: SamplingParams, settings: PlanSettings | None, model_dir: Path, *,
    plan_file: Path | None = None, answered: Answered | None = None,
    openai_defaults: SamplingParams = OPENAI_DEFAULTS, served_model: str | None = None,
    input_options: InputOptions = InputOptions(),
) -> PreparedJob:
    """Read, tokenize and plan `source` (a path or "-"); skip what `answered` holds (--resume).

    `settings` None: the plan file's settings, else the defaults; settings given with a plan file must
    be the plan's (else it is refused as made for other settings). OpenAI lines start from
    `openai_defaults` and must name `served_model` (when given) as body.model; `input_options` say
    whether the lines are JSONL or plain text.
    """
    loaded = None if plan_file is None else read_plan(plan_file)
    if settings is None:
        settings = PlanSettings() if loaded is None else loaded.settings
    loading = time.perf_counter()
    tokenizer = PromptTokenizer(model_dir)
    tokenizer_load_s = time.perf_counter() - loading
    # OpenAI's own default is the context; a value here came from --max-tokens, for every line without its own
    if openai_defaults.max_tokens is not None and openai_defaults.max_tokens >= tokenizer.max_context:
        raise UsageError(f"--max-tokens {openai_defaults.max_tokens} leaves no room for a prompt in the model's "
                         f"context of {tokenizer.max_context} tokens")
    tasks = model_tasks(model_dir, tokenizer.judgement.yes_no())
    items = _read(source, defaults, openai_defaults, served_model, input_options, tasks)
    tokenized = _unique_error_ids(whole_lines(tokenize_requests(items, tokenizer)))
    tokenized, grammars = compile_constraints(tokenized, tokenizer, lambda: eos_token_ids(model_dir))
    fp = fingerprint(tokenized, tokenizer.identity(), settings)
    identity = job_identity(tokenized, model_dir.name)
    plan = plan_for(tokenized, settings, model_dir.name, fp)
    if loaded is not None:
        check_plan(loaded, plan, plan_file)
        plan = loaded
    skipped = 0
    if answered:
        tokenized, skipped = _without(tokenized, answered)
        # Replanned, not filtered: a plan is exactly the plan its prompts give (check_plan refuses any
        # other), so a loaded plan adds only its settings, and those are kept. A filtered plan could not
        # be that plan of the remaining prompts: a segment whose other members were answered is no longer
        # shared and folds into its child, the decode-ratio order and the stats change, and the engine
        # relies on a plan being the plan of the prompts it runs (planning/shard.py).
        plan = plan_for(tokenized, settings, model_dir.name, fp)
    return PreparedJob(model_dir, tokenizer, tokenized, plan, skipped, identity, grammars, tokenizer_load_s)


def read_plan(path: Path) -> Plan:
    """The plan in `path`; PlanFileError if it cannot be read or is not a valid plan file."""
    try:
        return plan_from_json(Path(path).read_bytes())
    except OSError as e:
        raise PlanFileError(f"cannot read plan file {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise PlanFileError(f"plan file {path} is not a valid plan: {e}") from None


def check_plan(plan: Plan, expected: Plan, path: Path) -> None:
    """Refuse the plan read from `path` unless it is `expected` (the plan of this job's prompts, made
    with the same settings): only the plan that these prompts give is safe to run, since a segment read
    for a request must hold exactly that request's prompt tokens."""
    try:
        check_fingerprint(plan, expected.fingerprint)
    except PlanMismatchError:
        raise PlanFileError(f"plan file {path} was made {_made_for_other(plan, expected)}; "
                            "make a new one with `batchllm plan`") from None
    for name in ("segments", "order", "leaf", "stats"):
        if getattr(plan, name) != getattr(expected, name):
            raise PlanFileError(f"plan file {path} does not match the plan of this input (its {name} differ: edited?); "
                                "make a new one with `batchllm plan`")


def _made_for_other(plan: Plan, expected: Plan) -> str:
    """What differs between a plan file and this job's plan, as far as the plan tells."""
    for flag, name in (("--block-size", "block_size"), ("--sharing", "sharing")):
        theirs, ours = getattr(plan.settings, name), getattr(expected.settings, name)
        if theirs != ours:
            return f"with {flag} {theirs}, and this run asks for {flag} {ours} (leave {flag} out to use the plan's)"
    if plan.model != expected.model:
        return f"for model {plan.model!r}, and this run uses {expected.model!r}"
    if plan.stats.requests != expected.stats.requests:
        return f"for {plan.stats.requests:,} requests, and this input has {expected.stats.requests:,} to run"
    return ("for other data: the prompts, ids, max_tokens or n of this input differ from the plan's, or the "
            "tokenizer does")
