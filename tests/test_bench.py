"""The benchmark runs end to end and reports every variant (no timing assertions), and its FLOP counts."""

from __future__ import annotations

import re

import pytest

from rho_jax import flops
from rho_jax.bench import main
from rho_jax.models import ModelConfig


def test_bench_prints_its_table(capsys):
    assert main(["--batch", "8", "--seq-len", "16", "--steps", "1", "--warmup", "1", "--chunk", "8",
                 "--peak-tflops", "1"]) == 0
    out = capsys.readouterr().out
    rows = {name.strip(): cells for name, cells in re.findall(r"^\| ([^|]+) \|(.*)\|$", out, re.M)}
    assert {"CLM", "SLM (online reference)", "SLM (precomputed scores)", "reference scoring (rho_jax.score)",
            "selection (top-k over the batch)", "PyTorch peer SLM (transformers, torch.topk)"} <= set(rows)
    memory = {name: float(m) for name, cells in rows.items() for m in re.findall(r"([\d.]+) MiB", cells)}
    # compiled sizes, not timings: the precomputed step holds no reference parameters
    assert memory["SLM (precomputed scores)"] < memory["SLM (online reference)"]
    assert re.search(r"\d+\.\d%", rows["CLM"])  # an MFU, given the peak
    assert "selection alone / SLM (online) step = " in out and "rho_jax SLM (online) step / PyTorch peer step" in out


def test_flop_counts():
    cfg = ModelConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    n = flops.matmul_parameters(cfg)
    assert n == cfg.num_parameters() - 100 * 16  # the untied input embedding is a lookup
    attention = 4 * 2 * 4 * 4 * 64  # 4 L H Q T at T = 64
    assert flops.train_flops_per_token(cfg, 64) == 6 * n + 3 * attention
    assert flops.reference_flops_per_token(cfg, 64) == 2 * n + attention
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and flops.peak_tflops("cpu") is None


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_parameters_count_the_output_projection_once(tied):
    cfg = ModelConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    body = cfg.num_parameters() - 100 * 16 * (1 if tied else 2)
    assert flops.matmul_parameters(cfg) == body + 100 * 16
