"""The engines compared: batchllm's CLI, transformers `generate` and vLLM's CPU build.

Worker scripts (hf_generate, vllm_cpu) run in their own interpreter and speak the line protocol
in worker.py; the harness side of every peer lives in remote.py and batchllm.py.
"""
