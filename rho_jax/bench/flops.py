"""Model FLOPs of a train step, and the accelerators' peak throughput, for MFU.

Per token of a sequence of length T (PaLM's convention, causal attention counted in full):
    trained model   6 N + 12 L H Q T     (forward + backward)
    reference       2 N_ref + 4 L_r H_r Q_r T   (forward only)
with N the parameters used in matmuls (the input embedding is a lookup; tied embeddings count once,
as the output projection), L layers, H query heads, Q head dimension. MFU = model FLOPs per second
/ (peak FLOP/s per device x devices); recomputation (remat, the extra scoring pass of global
selection with accumulation) is work the hardware does but not model FLOPs.
"""

from __future__ import annotations

from rho_jax.models import ModelConfig

# Dense bf16 peak TFLOP/s per device, by a substring of `jax.Device.device_kind`.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "TPU v6": 918.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v4": 275.0,
}


def matmul_parameters(cfg: ModelConfig) -> int:
    """Parameters that take part in matmuls: all but the input embedding when it is not tied."""
    return cfg.num_parameters() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of QK^T and AV per token: 4 L H Q T."""
    return 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    return 6 * matmul_parameters(cfg) + 3 * attention_flops_per_token(cfg, seq_len)


def reference_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    return 2 * matmul_parameters(cfg) + attention_flops_per_token(cfg, seq_len)


def peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of a known accelerator, None for others (e.g. CPUs)."""
    return next((peak for name, peak in PEAK_BF16_TFLOPS.items() if name in device_kind), None)
