"""The judgement prompt of a score or rerank pair, as a decoder LLM reranker reads it, and its yes/no tokens.

A pair arrives as the user-side text `<Instruct>: ...\\n<Query>: ...\\n<Document>: ...`
(formats/scores.py). Its frame depends on the model:
- a Qwen3-Reranker (model_type qwen3 and "qwen3-reranker" in the directory's path or in config.json's
  `_name_or_path`): that model card's exact tokens: its system line and user opening, the pair, then
  the assistant opening with an empty think block, each part encoded on its own;
- any other model with a chat template: the same system line and the pair as a user message, rendered
  by the model's template with the generation prompt.
The relevance is then softmax(logit("no"), logit("yes"))[yes] at the prompt's last position, "yes"
and "no" being single tokens of the vocabulary.

Invariant: a pair's query comes before its document, so all pairs of one query share its prompt up to
the document; the prefix tree finds that prefix and computes it once.
"""

from __future__ import annotations

import json
from pathlib import Path

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')
_QWEN3_PREFIX = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
_QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def is_qwen3_reranker(model_dir: Path) -> bool:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    names = (str(model_dir.resolve()), str(config.get("_name_or_path", "")))
    return config.get("model_type") == "qwen3" and any("qwen3-reranker" in n.lower() for n in names)


class Judgement:
    """Turns pair texts into judgement prompts' token ids with one tokenizer (a transformers one)."""

    def __init__(self, tok, qwen3_reranker: bool) -> None:  # noqa: ANN001 - a transformers tokenizer
        self.tok = tok
        self.qwen3_reranker = qwen3_reranker
        if qwen3_reranker:
            self._prefix, self._suffix = (tok(t, add_special_tokens=False)["input_ids"] for t in (_QWEN3_PREFIX, _QWEN3_SUFFIX))

    def yes_no(self) -> tuple[int, int] | str:
        """The ids of ("no", "yes"), or why this tokenizer cannot judge."""
        if not self.qwen3_reranker and not self.tok.chat_template:
            return "the model has no chat template to frame a judgement prompt with"
        ids = self.tok.convert_tokens_to_ids(["no", "yes"])
        if any(i is None or i == self.tok.unk_token_id for i in ids):
            return 'the tokenizer has no single token for "yes" and "no"'
        return ids[0], ids[1]

    def encode(self, pairs: list[str]) -> list[list[int]]:
        """The judgement prompt of each pair text, as token ids."""
        if not pairs:
            return []
        if self.qwen3_reranker:
            bodies = self.tok(pairs, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            return [self._prefix + body + self._suffix for body in bodies]
        texts = [self.tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                                              add_generation_prompt=True, tokenize=False) for p in pairs]
        return self.tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
