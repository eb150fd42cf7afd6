"""Human summaries on a rich console: the plan's statistics table and the top of its prefix tree."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from batchcli.plan import Plan, TreeNode, top_segments

TREE_CHILDREN = 5  # children shown per node
TREE_DEPTH = 3


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


def prefix_tree(plan: Plan) -> Tree:
    """The head of the prefix tree in execution order (plan.top_segments), as a rich Tree."""
    nodes, left_out = top_segments(plan, limit=TREE_CHILDREN, depth=TREE_DEPTH)
    root = Tree(f"[bold]all requests[/bold] ({plan.stats.sequences:,} sequences)")

    def add(branch: Tree, node: TreeNode) -> None:
        seg = node.segment
        sub = branch.add(f"{seg.length:,} tokens at {seg.start:,} shared by {seg.sequences:,} sequences")
        for child in node.children:
            add(sub, child)
        if node.hidden:
            sub.add(f"[dim]... {node.hidden:,} more[/dim]")

    for node in nodes:
        add(root, node)
    if left_out:
        root.add(f"[dim]... {left_out:,} more[/dim]")
    return root


def plan_summary(plan: Plan, console: Console) -> None:
    console.print(stats_table(plan))
    console.print(prefix_tree(plan))
