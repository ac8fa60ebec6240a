"""Benchmarks (`python -m rho_jax.bench`).

step_bench.py  CLM / SLM / scoring / selection step timings, MFU, memory, the PyTorch peer
peer.py        the same SLM step written the common PyTorch way (transformers + torch.topk)
flops.py       model FLOPs per step and accelerator peaks, for MFU
op_profile.py  a profiler trace of a compiled step, summed per XLA operation
"""
