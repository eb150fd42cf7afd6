"""batchllm's fused CPU ops: C++ (AVX-512) built once per machine, loaded with ctypes (see build.py)."""
