"""What a model directory offers besides generation: how it embeds, and whether it can judge relevance.

Embeddings follow the directory's sentence-transformers files when present: `modules.json` names the
modules; its Pooling module's `config.json` says last-token (`pooling_mode_lasttoken`) or mean
(`pooling_mode_mean_tokens`) pooling, and a Normalize module means the vectors are L2-normalised.
Without those files a decoder embeds as decoder embedding models do: the last token's final hidden
state, normalised. `dimensions` (Matryoshka truncation) is offered only where the model declares it
was trained for it: a non-empty list `matryoshka_dimensions` in `config_sentence_transformers.json`;
any dimension up to the hidden size is then accepted (as OpenAI does), and the hidden size itself always.
Relevance (score, rerank) is the model's probability of "yes" against "no" at the end of a judgement
prompt (planning/judgement.py).

Invariant: a model that cannot do a task still runs every other line; its lines of that task get
one error line each, with `ModelTasks`' reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from batchcli.pooling_params import PoolingParams

ST_CONFIG = "config_sentence_transformers.json"
MATRYOSHKA_KEY = "matryoshka_dimensions"
_POOLING_MODES = {"pooling_mode_lasttoken": "last", "pooling_mode_mean_tokens": "mean"}
_NEUTRAL_MODULES = ("Transformer", "Pooling", "Normalize")
_ENDS = {"pooling_mode_cls_token": "cls pooling takes the first token, whose state on a decoder is the same for "
                                   "every input", "pooling_mode_max_tokens": "max pooling",
         "pooling_mode_mean_sqrt_len_tokens": "mean-sqrt-len pooling",
         "pooling_mode_weightedmean_tokens": "weighted-mean pooling"}


@dataclass(frozen=True, slots=True)
class ModelTasks:
    """The pooling of each non-generation task, or why the model cannot do it (the error lines' message)."""

    embed: PoolingParams | str  # the default embedding pooling (no dimensions), or the reason there is none
    hidden_size: int  # the full embedding size
    matryoshka: bool  # `dimensions` below the hidden size may be asked for
    judge: PoolingParams | str  # the logits of ("no", "yes") at a judgement prompt's end, or the reason

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if isinstance(self.embed, PoolingParams) and (self.embed.kind == "logits" or self.embed.dimensions is not None):
            raise ValueError(f"the embedding pooling must be a plain vector pooling, got {self.embed}")
        if isinstance(self.judge, PoolingParams) and (self.judge.kind != "logits" or len(self.judge.token_ids) != 2):
            raise ValueError(f"the judge must return the logits of (no, yes), got {self.judge}")


def read_embedding(model_dir: Path) -> tuple[PoolingParams | str, bool]:
    """The model's embedding pooling (or why it has none) and whether it declares Matryoshka training."""
    try:
        modules = _json(model_dir / "modules.json", list)
        matryoshka = bool(_json(model_dir / ST_CONFIG, dict).get(MATRYOSHKA_KEY))
        return _pooling(model_dir, modules), matryoshka
    except ValueError as e:
        return str(e), False


def _pooling(model_dir: Path, modules: list) -> PoolingParams | str:
    if not modules:
        return PoolingParams("last", normalize=True)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
    other = [k for k in kinds if k not in _NEUTRAL_MODULES]
    if other:
        return f"its sentence-transformers modules include {', '.join(other)}, which batchllm does not run"
    pooling = next((m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")), None)
    if pooling is None:
        return "its modules.json has no Pooling module"
    config = _json(model_dir / str(pooling.get("path", "")) / "config.json", dict)
    on = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    if config.get("include_prompt") is False:
        return "its pooling leaves out the prompt (include_prompt false), which batchllm does not do"
    if len(on) != 1 or on[0] not in _POOLING_MODES:
        why = _ENDS.get(on[0], on[0]) if len(on) == 1 else f"pooling modes {on or 'none'}"
        return f"{why} is not supported (last-token or mean pooling is)"
    return PoolingParams(_POOLING_MODES[on[0]], normalize="Normalize" in kinds)


def _json(path: Path, kind: type) -> dict | list:
    """The JSON value of `path` (empty when there is no such file); ValueError if it is unreadable."""
    if not path.is_file():
        return kind()
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"its {path.name} cannot be read ({e})") from None
    if not isinstance(value, kind):
        raise ValueError(f"its {path.name} does not hold a JSON {'list' if kind is list else 'object'}")
    return value


def model_tasks(model_dir: Path, yes_no: tuple[int, int] | str) -> ModelTasks:
    """The tasks of the model in `model_dir`, whose tokenizer's judgement tokens are `yes_no` (the ids
    of "no" and "yes", or why there are none: planning/judgement.py)."""
    embed, matryoshka = read_embedding(model_dir)
    hidden_size = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    judge = yes_no if isinstance(yes_no, str) else PoolingParams("logits", token_ids=yes_no)
    return ModelTasks(embed, hidden_size, matryoshka, judge)
