"""Attention kernels that take the mask's structure (causal, documents, window) instead of a dense mask.

mask.py       `DocumentMask`: causal + packed documents + sliding window, and its dense form
blockwise.py  online-softmax attention over key/value blocks in XLA (every backend), custom VJP
flash.py      the Pallas GPU kernel (`jax.experimental.pallas.ops.gpu.attention.mha`)
splash.py     the Pallas TPU kernel (`jax.experimental.pallas.ops.tpu.splash_attention`)
"""
