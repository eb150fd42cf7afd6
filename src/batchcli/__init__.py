"""batchllm: offline, throughput-first batch inference with global prefix sharing.

The library is usable without the CLI: read requests (`reader`), tokenize (`tokenize`), build the
prefix tree and plan (`trie`, `plan`), execute (`engine`), write results (`writer`).
"""

__version__ = "0.1.0"
