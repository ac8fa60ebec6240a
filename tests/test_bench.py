"""The benchmark runs end to end and reports both variants (no timing assertions)."""

from __future__ import annotations

from rho_jax.bench import main


def test_bench_prints_its_table(capsys):
    assert main(["--batch", "8", "--seq-len", "16", "--steps", "1", "--warmup", "1", "--chunk", "8"]) == 0
    out = capsys.readouterr().out
    assert "| CLM |" in out and "| SLM (online reference) |" in out
    assert "FLOP-count ratio (6N + 2N_ref) / 6N = 1.333" in out
