"""The generation benchmark runs end to end (no timing assertions): its report's structure, both
engines' greedy tokens equal, and the roofline formula."""

from __future__ import annotations

import re
import runpy
import sys

import pytest
import yaml

from rho_jax.bench.generation_bench import bandwidth_gbs, main, roofline_tokens_per_s
from rho_jax.models import ModelConfig


def tiny_config(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump(dict(model_type="llama", vocab_size=320, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=2048)))
    return str(config)


def test_generation_bench_reports_both_engines(tmp_path, capsys):
    assert main(["--model", tiny_config(tmp_path), "--batch", "2", "--prompt-len", "8", "--new-tokens", "5",
                 "--rounds", "1", "--gsm8k-prompts", "0", "--refill-prompts", "0", "--bandwidth-gbs", "100"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (rho_jax|transformers \(static cache\)) \|(.*)\|$", out, re.M))
    assert set(rows) == {"rho_jax", "transformers (static cache)"}
    assert all(len(cells.split("|")) == 5 and " ms " in cells for cells in rows.values())
    assert re.search(r"rho_jax / transformers: prefill [\d.]+x faster, decode [\d.na]+x, total [\d.]+x", out)
    assert "same greedy tokens: 2 of 2 rows" in out
    assert re.search(r"decode roofline at 100 GB/s: [\d,]+ tokens/s; rho_jax reaches [\d.na]+%", out)


@pytest.mark.slow
def test_generation_bench_counts_compilations_and_compares_refill(tmp_path, capsys):
    assert main(["--model", tiny_config(tmp_path), "--batch", "2", "--prompt-len", "8", "--new-tokens", "6",
                 "--rounds", "1", "--no-peer", "--gsm8k-prompts", "12", "--refill-prompts", "6"]) == 0
    out = capsys.readouterr().out
    assert "decode roofline: no datasheet bandwidth for this device" in out
    gsm8k = re.search(r"GSM8K-like run: 12 prompts of (\d+)-(\d+) tokens \(buckets \[(.*)\]\) compiled (\d+) programs", out)
    assert gsm8k and 750 <= int(gsm8k[1]) <= int(gsm8k[2]) <= 1000 and 2 <= int(gsm8k[4]) <= 6
    assert re.search(r"refill: 6 prompts, completions of \d+-\d+ tokens .* same completions: True", out)


def test_roofline_formula():
    cfg = ModelConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    weights = cfg.num_parameters() * 2
    kv_per_token = 2 * 2 * 2 * 4 * 2  # 2 (k, v) x layers x kv heads x head dim x bf16 bytes
    expected = 8 * 1000e9 / (weights + 8 * 300 * kv_per_token)
    assert roofline_tokens_per_s(cfg, 8, 300, 2, 2, 1000.0) == expected
    assert bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350.0 and bandwidth_gbs("cpu") is None


@pytest.mark.parametrize("argv, suite, rest", [(["generate", "--batch", "2"], "generate", (["--batch", "2"],)),
                                              (["--batch", "2"], "step", (None, ["--batch", "2"]))])
def test_bench_dispatches_generate_and_keeps_the_step_benchmark(argv, suite, rest, monkeypatch):
    """`python -m rho_jax.bench generate ...` runs the generation benchmark on the rest of the command
    line; without `generate` the step benchmark gets the command line, as before."""
    from rho_jax.bench import generation_bench, step_bench

    calls = []
    monkeypatch.setattr(generation_bench, "main", lambda args=None: calls.append(("generate", args)) or 0)
    monkeypatch.setattr(step_bench, "main", lambda args=None: calls.append(("step", args)) or 0)
    monkeypatch.setattr(sys, "argv", ["python -m rho_jax.bench", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("rho_jax.bench", run_name="__main__")
    assert exit_info.value.code == 0 and len(calls) == 1
    assert calls[0][0] == suite and calls[0][1] in rest
