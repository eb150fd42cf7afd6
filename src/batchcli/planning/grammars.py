"""Structured outputs: each distinct `Constraint` of a job compiled once (llguidance) for the model's
tokenizer; a constraint the library cannot compile becomes an error line for every request asking it.

Invariant: `Grammars.matcher(c)` is a fresh matcher at the start of constraint c's grammar, copied from
the one compiled matcher of c (a copy costs microseconds; compiling costs milliseconds and more).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from batchcli.requests import LineError
from batchcli.params import Constraint
from batchcli.planning.tokenize import PromptTokenizer, TokenizedRequests
from batchcli.planning.token_arrays import TokenArrays

_ANY_OBJECT = '{"type": "object"}'
# Fixed separators, no free whitespace: a small model given free whitespace can emit newlines until
# max_tokens; these match what json.dumps writes and OpenAI returns.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class Grammars:
    """Compiled matchers by constraint, all on one llguidance tokenizer."""

    def __init__(self, templates: dict[Constraint, object], vocab_size: int) -> None:
        self._templates = templates
        self.vocab_size = vocab_size  # the width of the masks, the tokenizer's (logits may be wider)

    def matcher(self, constraint: Constraint):  # noqa: ANN201 - an llguidance.LLMatcher
        return self._templates[constraint].deep_copy()


def _grammar_text(c: Constraint) -> str:
    import llguidance

    if c.kind in ("json_object", "json_schema"):
        return llguidance.LLMatcher.grammar_from_json_schema(c.spec or _ANY_OBJECT, defaults=_JSON_OPTIONS)
    return llguidance.grammar_from(c.kind, c.spec)  # "regex" | "choice" (a JSON list of strings)


def _compile(c: Constraint, lltok: object) -> tuple[object | None, str]:
    """The compiled matcher of `c`, or None and the library's reason."""
    import llguidance

    try:
        grammar = _grammar_text(c)
    except ValueError as e:  # llguidance rejects what it cannot translate with ValueError
        return None, str(e)
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        return None, matcher.get_error()
    return matcher, ""


def compile_constraints(tokenized: TokenizedRequests, tokenizer: PromptTokenizer,
                        eos_ids: Callable[[], Sequence[int]]) -> tuple[TokenizedRequests, Grammars | None]:
    """The requests without those whose constraint failed to compile (now error lines), and the grammars.

    `eos_ids` gives the model's end-of-sequence ids (read only when some request has a constraint):
    a finished grammar allows exactly these."""
    distinct = {r.params.constraint for r in tokenized.requests} - {None}
    if not distinct:
        return tokenized, None
    templates, reasons, vocab_size = _compile_all(distinct, tokenizer, eos_ids)
    if not reasons:
        return tokenized, Grammars(templates, vocab_size)
    keep = [i for i, r in enumerate(tokenized.requests) if r.params.constraint not in reasons]
    errors = [LineError(r.id, r.line, "invalid_constraint", f"the {r.params.constraint.kind} cannot be compiled: "
                        f"{reasons[r.params.constraint]}", r.custom_id)
              for r in tokenized.requests if r.params.constraint in reasons]
    kept = TokenizedRequests([tokenized.requests[i] for i in keep], TokenArrays.from_lists([tokenized.tokens[i] for i in keep]),
                             sorted(tokenized.errors + errors, key=lambda e: e.line))
    return kept, (Grammars(templates, vocab_size) if templates else None)


def compile_grammars(constraints: Iterable[Constraint | None], tokenizer: PromptTokenizer,
                     eos_ids: Callable[[], Sequence[int]]) -> Grammars | None:
    """The grammars of `constraints` (None entries ignored) where each is known to compile: a worker
    compiling its shard's, which the front half already checked (matchers do not pickle)."""
    distinct = set(constraints) - {None}
    if not distinct:
        return None
    templates, reasons, vocab_size = _compile_all(distinct, tokenizer, eos_ids)
    if reasons:
        c, reason = next(iter(reasons.items()))
        raise ValueError(f"the {c.kind} compiled in the front half but not here: {reason}")
    return Grammars(templates, vocab_size)


def _compile_all(distinct: set[Constraint], tokenizer: PromptTokenizer, eos_ids: Callable[[], Sequence[int]]
                 ) -> tuple[dict[Constraint, object], dict[Constraint, str], int]:
    """Compiled matchers and, for those that failed, the reasons; and the masks' width."""
    import llguidance.hf

    lltok = llguidance.hf.from_tokenizer(tokenizer.tok, eos_token=list(eos_ids()) or None)
    templates: dict[Constraint, object] = {}
    reasons: dict[Constraint, str] = {}
    for c in distinct:
        matcher, reason = _compile(c, lltok)
        if matcher is None:
            reasons[c] = reason
        else:
            templates[c] = matcher
    return templates, reasons, lltok.vocab_size
