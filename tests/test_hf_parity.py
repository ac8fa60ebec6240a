"""rho_jax logits equal `transformers` (torch, fp32) on tiny random models of every supported family."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rho_jax.models import ModelOptions, load_hf
from rho_jax.models.parity import PARITY_TOLERANCE, TINY_VARIANTS, hf_reference_logits, random_token_ids


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_logits_match_transformers(tiny_hf_dir, variant):
    hf_dir = tiny_hf_dir(variant)
    model = load_hf(hf_dir)
    ids = random_token_ids(model.config.vocab_size, batch=2, seq_len=40, seed=1)
    reference = hf_reference_logits(hf_dir, ids)
    assert np.abs(reference).max() > 1.0  # logits are O(1): the tolerance is meaningful
    np.testing.assert_allclose(np.asarray(model(ids)), reference, atol=PARITY_TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    "variant, edit",
    [
        ("mistral-sliding-window", {"sliding_window": None}),
        ("llama3-rope-scaling", {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
        ("llama-linear-rope-bias", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
        ("llama-gqa", {"rms_norm_eps": 1e-1}),
    ],
)
def test_parity_check_detects_a_wrong_detail(tiny_hf_dir, tmp_path, variant, edit):
    """The parity comparison is sensitive: dropping one architectural detail breaks it by far."""
    hf_dir = tiny_hf_dir(variant)
    wrong_dir = tmp_path / "wrong"
    shutil.copytree(hf_dir, wrong_dir)
    config = json.loads((wrong_dir / "config.json").read_text())
    config.update(edit)
    (wrong_dir / "config.json").write_text(json.dumps(config))
    ids = random_token_ids(320, batch=2, seq_len=40, seed=1)
    error = np.abs(np.asarray(load_hf(wrong_dir)(ids)) - hf_reference_logits(hf_dir, ids)).max()
    assert error > 100 * PARITY_TOLERANCE


def test_bf16_compute_keeps_fp32_params_and_logits(tiny_hf_dir):
    hf_dir = tiny_hf_dir("llama-gqa")
    model = load_hf(hf_dir, dtype=jnp.bfloat16)
    params = nnx.state(model, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    ids = random_token_ids(model.config.vocab_size, batch=2, seq_len=24, seed=2)
    logits = model(ids)
    assert logits.dtype == jnp.float32
    reference = hf_reference_logits(hf_dir, ids)
    error = np.abs(np.asarray(logits) - reference).max()
    assert 1e-4 < error < 0.25 * np.abs(reference).max()  # bf16 rounding, not a wrong model


def test_bf16_params_load(tiny_hf_dir):
    model = load_hf(tiny_hf_dir("llama-gqa"), options=ModelOptions(dtype="bfloat16", param_dtype="bfloat16"))
    kernel = model.layers.self_attn.q_proj.kernel[...]
    assert kernel.dtype == jnp.bfloat16 and kernel.shape == (3, 64, 4, 16)
