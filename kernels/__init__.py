"""Triton kernels of batchllm, shipped as `batchcli.kernels`.

`shared_prefix_attention.TritonAttention` is the CUDA attention backend (see
`batchcli.engine.attention`); `tiles` plans its tiles once per step in numpy; `tile_kernels` holds
the kernels and exactly how each is launched. Nothing here is imported by the package on CPU unless
the "triton" backend is asked for.
"""
