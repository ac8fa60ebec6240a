"""The benchmark runs end to end and reports every variant (no timing assertions)."""

from __future__ import annotations

import re

from rho_jax.bench import main


def test_bench_prints_its_table(capsys):
    assert main(["--batch", "8", "--seq-len", "16", "--steps", "1", "--warmup", "1", "--chunk", "8"]) == 0
    out = capsys.readouterr().out
    memory = {name.strip(): float(mib) for name, mib in re.findall(r"^\| ([^|]+) \|.* \| ([\d.]+) MiB \|$", out, re.M)}
    assert set(memory) == {"CLM", "SLM (online reference)", "SLM (precomputed scores)", "reference scoring (rho_jax.score)"}
    # compiled sizes, not timings: the precomputed step holds no reference parameters
    assert memory["SLM (precomputed scores)"] < memory["SLM (online reference)"]
    assert "FLOP-count ratio (6N + 2N_ref) / 6N = 1.333" in out
