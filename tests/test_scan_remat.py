"""Scanning over layers and rematerialization change how the model runs, never what it computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rho_jax.models import ModelOptions, load_hf
from rho_jax.models.parity import random_token_ids
from rho_jax.models.remat import REMAT_POLICIES


def _logits_and_grads(model, ids, segments):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(ids[:, :-1], segment_ids=segments[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean(), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


@pytest.fixture(scope="module")
def batch():
    ids = jnp.asarray(random_token_ids(320, batch=2, seq_len=17, seed=30))
    segments = jnp.asarray(np.array([[1] * 9 + [2] * 8, [1] * 17]))
    return ids, segments


@pytest.fixture(scope="module")
def baseline(tiny_hf_dir, batch):
    """Loss, logits and gradients of the default model (scan, no remat)."""
    return _logits_and_grads(load_hf(tiny_hf_dir("llama-gqa")), *batch)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [ModelOptions(scan_layers=False)]
    + [ModelOptions(scan_layers=scan, remat=name) for name in sorted(REMAT_POLICIES) if name != "none" for scan in (True, False)],
    ids=lambda o: f"scan={o.scan_layers}-remat={o.remat}",
)
def test_same_logits_and_gradients_as_plain_scan(tiny_hf_dir, batch, baseline, options):
    base_value, base_logits, base_grads = baseline
    value, logits, grads = _logits_and_grads(load_hf(tiny_hf_dir("llama-gqa"), options=options), *batch)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(base_logits), atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(value), float(base_value), rtol=1e-6)
    for (path, g), (_, g_base) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(base_grads)):
        assert float(jnp.abs(g_base[...]).max()) > 0, path
        np.testing.assert_allclose(np.asarray(g[...]), np.asarray(g_base[...]), atol=1e-5, rtol=1e-4, err_msg=str(path))


def test_remat_actually_rematerializes(tiny_hf_dir, batch):
    """The 'full' policy must change the compiled program (recomputation), not be silently ignored."""
    hf_dir = tiny_hf_dir("llama-gqa")

    def jaxpr_text(options):
        model = load_hf(hf_dir, options=options)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        f = lambda p: nnx.merge(graphdef, p, rest)(batch[0]).sum()
        return str(jax.make_jaxpr(jax.grad(f))(params))

    assert "remat" not in jaxpr_text(ModelOptions())
    assert "remat" in jaxpr_text(ModelOptions(remat="full"))


def test_unknown_remat_policy_is_rejected():
    with pytest.raises(ValueError, match="Unknown remat policy 'everything'.*dots"):
        ModelOptions(remat="everything")
