"""One-command benchmarks for batchllm against its peers: `python -m benchmarks [--quick]`.

Invariant: importing this package (or benchmarks.peers) pulls in nothing beyond the standard
library, because peer workers run it from interpreters that lack the project's dependencies.
"""
