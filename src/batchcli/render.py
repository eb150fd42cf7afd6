"""Summaries of a prepared job: the plan's statistics (a rich table, or JSON for scripts), the first
error lines with their reasons, and the top of the prefix tree, each node with a text preview and
an example request id."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from batchcli.pipeline import PreparedJob
from batchcli.plan import Plan, Segment, TreeNode, top_segments

TREE_CHILDREN = 5  # children shown per node
TREE_DEPTH = 3
ERRORS_SHOWN = 5
PREVIEW_TOKENS = 16
PREVIEW_CHARS = 40


def stats_table(plan: Plan) -> Table:
    s = plan.stats
    table = Table(title=f"plan for {plan.model} (sharing {plan.settings.sharing}, block {plan.settings.block_size})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    rows = [
        ("requests", f"{s.requests:,}"), ("sequences", f"{s.sequences:,}"), ("error lines", f"{s.errors:,}"),
        ("logical prefill tokens", f"{s.logical_prefill_tokens:,}"),
        ("physical prefill tokens", f"{s.physical_prefill_tokens:,}"),
        ("saving ratio", f"{100 * s.saving_ratio:.1f}%"), ("groups", f"{s.groups:,}"),
        ("shared segments", f"{len(plan.segments):,}"), ("mean sharing degree", f"{s.mean_sharing_degree:.1f}"),
        ("tree depth", str(s.max_depth)), ("estimated KV peak (tokens)", f"{s.est_kv_peak_tokens:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def segment_label(job: PreparedJob) -> Callable[[Segment], str]:
    """A segment's first tokens as text, and the id of its first member request."""
    def label(seg: Segment) -> str:
        request = job.plan.order[seg.first]
        tokens = job.batch.tokens[request][seg.start : seg.start + min(seg.length, PREVIEW_TOKENS)]
        text = " ".join(job.tokenizer.decode(tokens.tolist()).split())
        text = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."
        return f"{text!r}, e.g. {job.batch.requests[request].id}"

    return label


def prefix_tree(plan: Plan, label: Callable[[Segment], str] = lambda seg: "") -> Tree:
    """The head of the prefix tree in execution order (plan.top_segments), as a rich Tree."""
    nodes, left_out = top_segments(plan, limit=TREE_CHILDREN, depth=TREE_DEPTH)
    root = Tree(f"[bold]all requests[/bold] ({plan.stats.sequences:,} sequences)")

    def add(branch: Tree, node: TreeNode) -> None:
        seg = node.segment
        text = escape(label(seg))
        sub = branch.add(f"{seg.length:,} tokens at {seg.start:,} shared by {seg.sequences:,} sequences"
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
    errors = job.batch.errors
    shown = [f"line {e.line} ({e.id}): {e.code}: {e.message}" for e in errors[:ERRORS_SHOWN]]
    return shown + ([f"... {len(errors) - ERRORS_SHOWN:,} more"] if len(errors) > ERRORS_SHOWN else [])


def plan_summary(job: PreparedJob, console: Console) -> None:
    console.print(stats_table(job.plan))
    if job.batch.errors:
        console.print(f"{len(job.batch.errors):,} error lines:", highlight=False)
        for line in error_lines(job):
            console.print(f"  {escape(line)}", highlight=False)
    console.print(prefix_tree(job.plan, segment_label(job)))


def stats_json(job: PreparedJob) -> bytes:
    """The plan's statistics and the first error lines, as one JSON object."""
    errors = [{"line": e.line, "id": e.id, "code": e.code, "message": e.message} for e in job.batch.errors[:ERRORS_SHOWN]]
    return orjson.dumps({**asdict(job.plan.stats), "segments": len(job.plan.segments), "first_errors": errors})
