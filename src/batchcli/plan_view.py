"""Summaries of a prepared job: the plan's statistics (a rich table, or JSON for scripts), the run's
estimated time and KV peak, the first error lines with their reasons, and the top of the prefix tree,
each node with a text preview and an example request id."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from batchcli.estimate import Estimate, estimate
from batchcli.pipeline import PreparedJob
from batchcli.planning.plan import Plan, Segment, TreeNode, top_segments

TREE_CHILDREN = 5  # children shown per node
TREE_DEPTH = 3
ERRORS_SHOWN = 5
PREVIEW_TOKENS = 16
PREVIEW_CHARS = 40
WIDE = 400  # columns for a summary read outside a terminal: past any tree line's length, so none is cropped


def title(plan: Plan) -> str:
    return f"plan for {plan.model} (sharing {plan.settings.sharing}, KV blocks of {plan.settings.block_size} tokens)"


def stats_table(plan: Plan) -> Table:
    """The statistics in words a user knows (the --json keys keep the plan file's names)."""
    s = plan.stats
    table = Table()
    table.add_column("statistic")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{s.requests:,}"), ("sequences (a request's n samples each)", f"{s.sequences:,}"),
        ("error lines", f"{s.errors:,}"),
        ("prompt tokens, all sequences", f"{s.logical_prefill_tokens:,}"),
        ("prompt tokens to compute (shared prefixes once)", f"{s.physical_prefill_tokens:,}"),
        ("prompt computation saved by sharing", f"{100 * s.saving_ratio:.1f}%"),
        ("groups of requests run together", f"{s.groups:,}"), ("shared prefixes", f"{len(plan.segments):,}"),
        ("sequences per shared prefix (mean)", f"{s.mean_sharing_degree:.1f}"),
        ("levels of shared prefixes", str(s.max_depth)), ("KV cache peak, estimated (tokens)", f"{s.est_kv_peak_tokens:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def segment_label(job: PreparedJob) -> Callable[[Segment], str]:
    """A segment's first tokens as text, and the id of its first member request."""
    def label(seg: Segment) -> str:
        request = job.plan.order[seg.first]
        tokens = job.tokenized.tokens[request][seg.start : seg.start + min(seg.length, PREVIEW_TOKENS)]
        text = " ".join(job.tokenizer.decode(tokens.tolist()).split())
        text = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."
        return f"{text!r}, e.g. {job.tokenized.requests[request].id}"

    return label


def prefix_tree(plan: Plan, label: Callable[[Segment], str] = lambda seg: "") -> Tree:
    """The head of the prefix tree in execution order (plan.top_segments), as a rich Tree."""
    nodes, left_out = top_segments(plan, limit=TREE_CHILDREN, depth=TREE_DEPTH)
    root = Tree(f"[bold]all requests[/bold] ({plan.stats.sequences:,} sequences)")

    def add(branch: Tree, node: TreeNode) -> None:
        seg = node.segment
        text = escape(label(seg))
        where = "from the start" if seg.start == 0 else f"after the first {seg.start:,}"
        sub = branch.add(f"{seg.length:,} prompt tokens {where}, shared by {seg.sequences:,} sequences"
                         + (f": {text}" if text else ""))
        for child in node.children:
            add(sub, child)
        if node.hidden:
            sub.add(f"[dim]... {node.hidden:,} more[/dim]")

    for node in nodes:
        add(root, node)
    if left_out:
        root.add(f"[dim]... {left_out:,} more[/dim]")
    return root


def error_lines(job: PreparedJob) -> list[str]:
    """Which lines got error records and why: the first few, and how many more."""
    errors = job.tokenized.errors
    shown = [f"line {e.line} ({e.id}): {e.code}: {e.message}" for e in errors[:ERRORS_SHOWN]]
    return shown + ([f"... {len(errors) - ERRORS_SHOWN:,} more"] if len(errors) > ERRORS_SHOWN else [])


def plan_summary(job: PreparedJob, console: Console) -> None:
    """The summary; uncropped where no terminal sets a width (a log, a pipe: rich would assume 80)."""
    if not console.is_terminal:
        console = Console(file=console.file, width=WIDE, highlight=False)
    console.print(title(job.plan), highlight=False)
    console.print(stats_table(job.plan))
    console.print(estimate_line(estimate(job)), highlight=False)
    if job.tokenized.errors:
        console.print(f"{len(job.tokenized.errors):,} error lines:", highlight=False)
        for line in error_lines(job):
            console.print(f"  {escape(line)}", highlight=False)
    console.print(prefix_tree(job.plan, segment_label(job)))


def estimate_line(e: Estimate) -> str:
    return (f"estimated run on this CPU: about {_duration(e.seconds)} for {e.prefill_tokens:,} prompt tokens to "
            f"compute and at most {e.output_tokens:,} output tokens; KV cache peak about "
            f"{e.kv_peak_bytes / 2**20:,.1f} MiB ({e.kv_dtype}). How sure: {e.basis}.")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def stats_json(job: PreparedJob) -> bytes:
    """The plan's statistics, the estimate and the first error lines, as one JSON object."""
    errors = [{"line": e.line, "id": e.id, "code": e.code, "message": e.message} for e in job.tokenized.errors[:ERRORS_SHOWN]]
    return orjson.dumps({**asdict(job.plan.stats), "segments": len(job.plan.segments),
                         "estimate": asdict(estimate(job)), "first_errors": errors})
