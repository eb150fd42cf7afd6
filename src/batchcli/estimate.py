"""A job's run time and KV cache peak, estimated before it runs (`plan --dry-run`), and how sure that is.

The time is the sharder's per-token costs (sharding.CPU_COSTS, measured for SmolLM2-135M in bf16 with
the fused CPU ops on a 2-core Zen 4) scaled by the model's parameter count, over the prompt tokens the
plan computes and every request's max_tokens x n: an upper bound where outputs stop early, and a rough
one on any other machine, so the basis is said with it. The KV peak is the plan's estimated peak in
tokens times the bytes one token takes in this model at the dtype `auto` picks on this CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from batchcli.engine.devices import pick_dtype
from batchcli.model_config import ArchConfig, load_config
from batchcli.pipeline import PreparedJob
from batchcli.planning.sharding import CPU_COSTS

# SmolLM2-135M-Instruct's parameters, which CPU_COSTS were measured with (_parameters of its config:
# hidden 576, intermediate 1536, 30 layers, 9 heads and 3 KV heads of 64, vocabulary 49,152).
MEASURED_PARAMETERS = 134_479_872
BASIS = ("rough, from per-token costs measured for SmolLM2-135M (bf16, fused CPU ops) on a 2-core Zen 4, scaled by "
         "this model's size; an upper bound if outputs stop before max_tokens; on a GPU far less")


@dataclass(frozen=True, slots=True)
class Estimate:
    seconds: float  # on the CPU, every request generating its max_tokens x n
    prefill_tokens: int  # prompt tokens computed, each shared prefix once
    output_tokens: int  # max_tokens x n over the requests
    kv_peak_bytes: int
    kv_dtype: str
    basis: str = BASIS


def _parameters(a: ArchConfig) -> int:
    attention = a.hidden_size * a.head_dim * (2 * a.num_heads + 2 * a.num_kv_heads)  # q, o and k, v
    return a.num_layers * (attention + 3 * a.hidden_size * a.intermediate_size) + a.vocab_size * a.hidden_size


def estimate(job: PreparedJob) -> Estimate:
    arch = load_config(job.model_dir)
    dtype = pick_dtype("auto", torch.device("cpu"))
    per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * torch.empty((), dtype=dtype).element_size()
    output = sum(r.params.max_tokens * r.params.n for r in job.tokenized.requests)
    prefill = job.plan.stats.physical_prefill_tokens
    scale = _parameters(arch) / MEASURED_PARAMETERS
    seconds = scale * (prefill * CPU_COSTS.prefill_s + output * CPU_COSTS.decode_s)
    return Estimate(seconds, prefill, output, job.plan.stats.est_kv_peak_tokens * per_token, str(dtype).removeprefix("torch."))
