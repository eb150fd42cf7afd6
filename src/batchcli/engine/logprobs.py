"""Log-probabilities of sampled tokens: the log-softmax, over the whole vocabulary, of the logits the
token was sampled from (after logit_bias, penalties, the grammar mask and temperature; before the
top-k / top-p / min_p cuts, so alternatives outside the cut still get their real value).
"""

from __future__ import annotations

import torch

from batchcli.params import SamplingParams
from batchcli.engine.events import TokenLogprob


def token_logprobs(logits: torch.Tensor, tokens: list[int | None],
                   params: list[SamplingParams]) -> list[TokenLogprob | None]:
    """Per row of `logits` [N, V]: the sampled token's entry, or None (no logprobs asked, or no token)."""
    out: list[TokenLogprob | None] = [None] * len(params)
    picked = [i for i, p in enumerate(params) if p.logprobs is not None and tokens[i] is not None]
    if not picked:
        return out
    at = torch.tensor(picked, device=logits.device)
    lp = torch.log_softmax(logits[at].float(), dim=-1)  # [R, V]
    chosen = lp.gather(1, torch.tensor([[tokens[i]] for i in picked], device=logits.device))[:, 0].tolist()  # [R]
    k = max(params[i].logprobs for i in picked)
    top_vals, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())  # [R, k]
    top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
    for j, i in enumerate(picked):
        ki = params[i].logprobs
        out[i] = TokenLogprob(tokens[i], chosen[j], tuple(zip(top_ids[j][:ki], top_vals[j][:ki])))
    return out
