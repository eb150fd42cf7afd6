"""One-command benchmarks for batchllm against its peers: `python -m benchmarks [--quick]`.

Invariant: importing this package (or benchmarks.peers) pulls in nothing beyond the standard
library, because peer workers run it from interpreters that lack the project's dependencies.
"""

import sys
from pathlib import Path


def _checkout_root_last() -> None:
    """Move the checkout root to the end of sys.path.

    `python -m benchmarks` from the root puts the root first on sys.path, and the root also holds
    `kernels/` (which is only ever `batchcli.kernels`): first on the path it would shadow the
    installed `kernels` package that transformers imports. Last, installed packages win and
    `benchmarks` still imports.
    """
    root = Path(__file__).resolve().parent.parent
    at_root = [p for p in sys.path if Path(p or ".").resolve() == root]
    if at_root:
        sys.path[:] = [p for p in sys.path if p not in at_root] + [str(root)]


_checkout_root_last()

