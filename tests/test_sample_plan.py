"""Golden plan statistics for sample_data/questions.jsonl on the default model's tokenizer.

The sample has three documents under two system-prompt forms (chat and plain), so the tree has two
levels: a guard that the whole front half (reader, chat template, tokenizer, tree, plan) holds together.
"""

from __future__ import annotations

from pathlib import Path

from batchcli.pipeline import prepare
from batchcli.planning.plan import PlanSettings
from batchcli.params import SamplingParams

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "questions.jsonl"


def test_sample_plan_statistics(smol_dir):
    job = prepare(str(SAMPLE), SamplingParams(), PlanSettings(block_size=16, sharing="multi"), smol_dir)
    s = job.plan.stats
    assert (s.requests, s.sequences, s.errors) == (19, 20, 0)
    assert (s.logical_prefill_tokens, s.physical_prefill_tokens) == (2730, 1082)
    assert abs(s.saving_ratio - (1 - 1082 / 2730)) < 1e-12
    assert (len(job.plan.segments), s.groups, s.max_depth) == (8, 9, 2)
    top = sorted(seg.sequences for seg in job.plan.segments if seg.parent == -1)
    assert top == [7, 9]  # the system prompt as plain text (7 requests) and through the chat template (9)
