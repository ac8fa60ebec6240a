"""load_hf streams weights: peak host memory stays near one copy of the model, never two."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rho_jax.models import read_hf_config
from rho_jax.models.parity import build_tiny_hf_model

_MEASURE = textwrap.dedent(
    r"""
    import re, sys
    import jax.numpy as jnp
    from rho_jax.models import load_hf

    def peak_rss_bytes():  # VmHWM: this process's resident high-water mark (not inherited like ru_maxrss)
        return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    jnp.zeros(8).block_until_ready()  # start the runtime before the baseline
    before = peak_rss_bytes()
    model = load_hf(sys.argv[1])
    print(peak_rss_bytes() - before)
    """
)


@pytest.mark.slow
def test_peak_host_memory_of_load_hf(tmp_path):
    hf_dir = build_tiny_hf_model(
        tmp_path / "mid", "llama-gqa", vocab_size=8000, hidden_size=512, intermediate_size=2048,
        num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=2,
    )
    model_bytes = read_hf_config(hf_dir).num_parameters() * 4  # ~210 MB in fp32
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(hf_dir)], capture_output=True, text=True, check=True)
    peak_growth = int(result.stdout.strip().splitlines()[-1])
    # One model copy plus a few per-layer tensors and the 16 MB embedding in flight; two copies are >= 2x.
    assert 0.9 * model_bytes < peak_growth < 1.5 * model_bytes, (peak_growth, model_bytes)
