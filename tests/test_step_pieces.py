"""The named pieces of the train step and the one per-token-loss path, each against a plain reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rho_jax import slm
from rho_jax.models import Llama, ModelConfig
from rho_jax.sharding import make_mesh
from rho_jax.slm import SLMConfig
from rho_jax.step import accumulate, merge_micro_batches, select_in_scope, split_micro_batches

MODEL = ModelConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, rms_norm_eps=1e-5)


def scores_and_valid(seed=0, shape=(6, 10)):
    rng = np.random.default_rng(seed)
    loss, ref_loss, ref_entropy = (jnp.asarray(rng.gamma(2.0, 1.5, shape), jnp.float32) for _ in range(3))
    return loss, ref_loss, ref_entropy, jnp.asarray(rng.random(shape) < 0.8)


def test_micro_batches_are_strided_and_merge_back():
    x = np.arange(12 * 3).reshape(12, 3)
    micro = split_micro_batches({"x": jnp.asarray(x)}, 4)["x"]
    assert micro.shape == (4, 3, 3)
    for i in range(4):  # micro-batch i holds rows i, i + 4, i + 8
        np.testing.assert_array_equal(micro[i], x[i::4])
    np.testing.assert_array_equal(merge_micro_batches(micro), x)
    with pytest.raises(ValueError, match="not divisible by accumulation_steps=5"):
        split_micro_batches({"x": jnp.asarray(x)}, 5)


@pytest.mark.parametrize("score", ["excess", "reference_loss", "reference_entropy", "intersection"])
def test_select_in_scope_global_and_per_row(score):
    loss, ref_loss, ref_entropy, valid = scores_and_valid()
    cfg = SLMConfig(ratio=0.4, score=score)
    whole = slm.select_by_score(score, 0.4, valid, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy)
    np.testing.assert_array_equal(select_in_scope(cfg, valid, loss, ref_loss, ref_entropy), whole)
    rows = select_in_scope(SLMConfig(ratio=0.4, score=score, scope="sequence"), valid, loss, ref_loss, ref_entropy)
    for r in range(valid.shape[0]):
        one = slm.select_by_score(score, 0.4, valid[r:r + 1], loss=loss[r:r + 1], ref_loss=ref_loss[r:r + 1],
                                  ref_entropy=ref_entropy[r:r + 1])
        np.testing.assert_array_equal(rows[r], one[0])
    if score != "intersection":  # each row keeps exactly ceil(ratio * its valid tokens)
        np.testing.assert_array_equal(rows.sum(1), np.ceil(0.4 * np.asarray(valid).sum(1)).astype(int))


def test_ratio_one_selects_every_valid_token_without_scores():
    *_, valid = scores_and_valid(1)
    np.testing.assert_array_equal(select_in_scope(SLMConfig(ratio=1.0), valid, None, None, None), valid)


def test_accumulate_sums_gradients_and_sums_over_micro_batches():
    """f(w, m) = sum(m * w^2): the accumulated gradient is 2 w sum(m) and the sums add up."""
    w = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    micro = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 3)), jnp.float32)

    def objective(params, m):
        value = jnp.sum(m * params["w"] ** 2)
        return value, {"value": value, "count": jnp.float32(m.shape[0])}

    shape = jax.eval_shape(lambda m: objective(w, m)[1], micro[0])
    grads, sums = accumulate(objective, w, micro, shape)
    np.testing.assert_allclose(grads["w"], 2 * np.asarray(w["w"]) * np.asarray(micro).sum((0, 1)), rtol=1e-5)
    np.testing.assert_allclose(sums["value"], (np.asarray(micro) * np.asarray(w["w"]) ** 2).sum(), rtol=1e-5)
    assert float(sums["count"]) == 20


def test_token_losses_on_mesh_equals_the_plain_computation_for_any_row_count():
    """3 rows on 8 devices: padded to 8 on the way in, cut back on the way out; the reduction
    ignores the padding rows."""
    graphdef, params = nnx.split(Llama(MODEL, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, 48, (3, 12)).astype(np.int32),
             "targets": rng.integers(0, 48, (3, 12)).astype(np.int32),
             "segment_ids": np.ones((3, 12), np.int32), "valid": rng.random((3, 12)) < 0.7}
    expected_loss, expected_entropy = jax.jit(
        lambda p, b: slm.model_token_losses(graphdef, p, b, chunk_size=None, with_entropy=True))(params, batch)
    mesh = make_mesh()
    loss, entropy = slm.token_losses_on_mesh(graphdef, mesh, chunk_size=5, with_entropy=True)(params, batch)
    assert loss.shape == (3, 12)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, expected_entropy, rtol=1e-5, atol=1e-5)
    total = slm.token_losses_on_mesh(graphdef, mesh, chunk_size=None,
                                     reduce=lambda loss, _, b: jnp.sum(jnp.where(b["valid"], loss, 0.0)))(params, batch)
    np.testing.assert_allclose(total, np.asarray(expected_loss)[batch["valid"]].sum(), rtol=1e-5)
