"""The benchmark runs end to end and reports every variant (no timing assertions), and its FLOP counts."""

from __future__ import annotations

import re

import pytest

from rho_jax.bench import flops
from rho_jax.bench.step_bench import main, measured_matmul_tflops
from rho_jax.models import ModelConfig


@pytest.mark.slow
def test_bench_prints_its_table(capsys, tmp_path):
    assert main(["--batch", "8", "--seq-len", "16", "--steps", "1", "--warmup", "1", "--chunk", "8",
                 "--profile", str(tmp_path), "--selection-tokens", "4096"]) == 0
    out = capsys.readouterr().out
    rows = {name.strip(): cells for name, cells in re.findall(r"^\| ([^|]+) \|(.*)\|$", out, re.M)}
    assert {"CLM", "SLM (online reference)", "SLM (precomputed scores)", "reference scoring (rho_jax.score)",
            "selection (top-k over the batch)", "PyTorch peer SLM (transformers, torch.topk)"} <= set(rows)
    memory = {name: float(m) for name, cells in rows.items() for m in re.findall(r"([\d.]+) MiB", cells)}
    # compiled sizes, not timings: the precomputed step holds no reference parameters
    assert memory["SLM (precomputed scores)"] < memory["SLM (online reference)"]
    assert "(measured float32 2048^3 matmul)" in out  # no datasheet peak for a CPU
    assert re.search(r"\d+\.\d%", rows["CLM"])  # an MFU against that peak
    assert "selection alone / SLM (online) step = " in out and "rho_jax SLM (online) step / PyTorch peer step" in out
    assert re.search(r"selection alone over 4,096 tokens = [\d.]+ ms, [\d.]+% of an SLM \(online\) step", out)
    assert re.search(r"profile of the SLM \(online\) step .*\n.*matmuls \d+%", out)


def test_measured_matmul_throughput_is_plausible():
    """A 256^3 matmul on a CPU: more than 0.1 GFLOP/s and less than 100 TFLOP/s (catches unit errors)."""
    assert 1e-4 < measured_matmul_tflops("float32", size=256) < 100


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


def test_op_profile_finds_the_matmul_of_a_program(tmp_path):
    """A program that is one large matmul plus a small elementwise op: the trace's events are matched
    to its HLO, the matmul is classified as such and takes most of the time."""
    import jax
    import jax.numpy as jnp

    from rho_jax.bench.op_profile import format_profile, profile_ops

    program = jax.jit(lambda a: jnp.tanh(a[:8]) + (a @ a)[:8])
    a = jnp.ones((512, 512))
    program(a)
    ops = profile_ops(lambda: program(a), program.lower(a).compile().as_text(), steps=3, trace_dir=tmp_path)
    matmuls = [op for op in ops if op.is_matmul]
    assert matmuls and matmuls[0].calls_per_step == 1 and "512" in matmuls[0].shape
    assert sum(op.seconds_per_step for op in matmuls) > 0.5 * sum(op.seconds_per_step for op in ops)
    assert "| operation | ms / step |" in format_profile(ops, step_seconds=0.01)
