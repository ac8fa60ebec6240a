"""The SLM formulas against an independent NumPy implementation of the paper's definitions."""

from __future__ import annotations

import math
from decimal import Decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rho_jax import slm

# ---- independent reference (plain NumPy / Python, written from the paper's eq. 3-4) -----------


def np_scores(kind, loss, ref_loss, ref_entropy):
    return {"excess": loss - ref_loss, "reference_loss": -ref_loss, "reference_entropy": -ref_entropy}[kind]


def np_select(scores, valid, ratio):
    k = math.ceil(Decimal(str(ratio)) * int(valid.sum()))
    candidates = [i for i in range(scores.size) if valid.flat[i]]
    candidates.sort(key=lambda i: (-scores.flat[i], i))  # higher score first, then lower index
    selected = np.zeros(scores.size, bool)
    selected[candidates[:k]] = True
    return selected.reshape(scores.shape)


def np_select_kind(kind, ratio, valid, loss, ref_loss, ref_entropy):
    if kind == "intersection":
        return (np_select(-ref_loss, valid, ratio) & np_select(-ref_entropy, valid, ratio))
    return np_select(np_scores(kind, loss, ref_loss, ref_entropy), valid, ratio)


def np_slm_loss(loss, selected):
    return (loss * selected).sum() / max(selected.sum(), 1)


# ---- inputs -------------------------------------------------------------------------------------


def random_inputs(seed, shape=(4, 16), ties=False, invalid_rows=()):
    rng = np.random.default_rng(seed)
    if ties:
        draw = lambda: rng.integers(0, 4, shape).astype(np.float32)
    else:
        draw = lambda: rng.gamma(2.0, 1.5, shape).astype(np.float32)
    loss, ref_loss, ref_entropy = draw(), draw(), draw()
    valid = rng.random(shape) < 0.8
    valid[list(invalid_rows)] = False
    return loss, ref_loss, ref_entropy, valid


CASES = [
    dict(seed=0),
    dict(seed=1, ties=True),
    dict(seed=2, ties=True, invalid_rows=(1, 3)),
    dict(seed=3, invalid_rows=(0,)),
]
RATIOS = [1e-4, 0.1, 0.6, 0.7, 0.95, 1.0]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("kind", slm.SCORE_FUNCTIONS)
def test_selection_and_loss_match_numpy(case, ratio, kind):
    loss, ref_loss, ref_entropy, valid = random_inputs(**case)
    expected = np_select_kind(kind, ratio, valid, loss, ref_loss, ref_entropy)
    selected = np.asarray(jax.jit(slm.select_by_score, static_argnums=(0, 1))(
        kind, ratio, valid, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy))
    np.testing.assert_array_equal(selected, expected)
    if kind != "intersection":
        assert selected.sum() == math.ceil(Decimal(str(ratio)) * int(valid.sum()))
    value, metrics = slm.slm_loss(jnp.asarray(loss), selected, valid, jnp.asarray(ref_loss))
    np.testing.assert_allclose(float(value), np_slm_loss(loss, expected), rtol=1e-6)
    unselected = valid & ~expected
    np.testing.assert_allclose(float(metrics["loss_unselected"]), np_slm_loss(loss, unselected), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss_all"]), np_slm_loss(loss, valid), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["ref_loss"]), np_slm_loss(ref_loss, valid), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["excess_loss"]), np_slm_loss(loss - ref_loss, valid), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["selected_fraction"]), expected.sum() / max(valid.sum(), 1), rtol=1e-6)


@pytest.mark.parametrize("kind", ["excess", "reference_loss", "reference_entropy"])
def test_scores_match_numpy_and_mask_invalid(kind):
    loss, ref_loss, ref_entropy, valid = random_inputs(5)
    scores = np.asarray(slm.token_scores(kind, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy, valid=valid))
    np.testing.assert_allclose(scores[valid], np_scores(kind, loss, ref_loss, ref_entropy)[valid], rtol=1e-6)
    assert np.all(np.isneginf(scores[~valid]))


def test_k_is_exact_for_decimal_ratios():
    """0.7 * 10 is 7.000000000000001 in floating point; k must still be 7."""
    for ratio, n, k in [(0.7, 10, 7), (0.6, 10, 6), (0.6, 11, 7), (1 / 3, 9, 3), (0.0001, 5, 1), (1.0, 0, 0),
                        (0.65, 2_000_003, 1_300_002)]:
        assert int(slm.num_to_select(jnp.asarray(n), ratio)) == k, (ratio, n)


def test_all_invalid_batch_selects_nothing_and_loss_is_zero():
    loss = jnp.ones((2, 5))
    valid = jnp.zeros((2, 5), bool)
    selected = slm.select_tokens(loss, valid, 0.5)
    assert not bool(selected.any())
    value, metrics = slm.slm_loss(loss, selected, valid)
    assert float(value) == 0.0 and float(metrics["selected_fraction"]) == 0.0


def test_ratio_one_is_plain_mean_cross_entropy():
    loss, ref_loss, _, valid = random_inputs(7)
    selected = slm.select_tokens(slm.token_scores("excess", loss, ref_loss, valid=valid), valid, 1.0)
    value, _ = slm.slm_loss(jnp.asarray(loss), selected, valid)
    np.testing.assert_allclose(float(value), loss[valid].mean(), rtol=1e-6)


def _ce_inputs(seed=0, batch=2, seq=13, dim=8, vocab=37):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(batch, seq, dim)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(dim, vocab)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (batch, seq)))
    return hidden, weights, targets


def test_token_losses_match_log_softmax_and_entropy():
    hidden, weights, targets = _ce_inputs()
    logits = np.einsum("btd,dv->btv", np.asarray(hidden, np.float64), np.asarray(weights, np.float64))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected_loss = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    expected_entropy = -(np.exp(logp) * logp).sum(-1)
    for chunk in (None, 4, 13, 100):
        loss, entropy = slm.token_losses(hidden, weights, targets, chunk_size=chunk, with_entropy=True)
        np.testing.assert_allclose(np.asarray(loss), expected_loss, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(entropy), expected_entropy, rtol=1e-5, atol=1e-5)


def test_cross_entropy_gradients_match_numpy():
    """The fused backward pass against the textbook gradient in float64 NumPy:
    d/dlogits sum_t m_t CE_t = m * (softmax - one_hot); dh = dlogits W^T, dW = h^T dlogits."""
    hidden, weights, targets = _ce_inputs(seed=1)
    mask = np.random.default_rng(1).random(targets.shape) < 0.5
    h64, w64 = np.asarray(hidden, np.float64), np.asarray(weights, np.float64)
    logits = np.einsum("btd,dv->btv", h64, w64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    one_hot = np.arange(logits.shape[-1]) == np.asarray(targets)[..., None]
    d_logits = (probs - one_hot) * mask[..., None]
    expected = (np.einsum("btv,dv->btd", d_logits, w64), np.einsum("btd,btv->dv", h64, d_logits))

    def objective(h, w, chunk):
        loss, _ = slm.token_losses(h, w, targets, chunk_size=chunk)
        return jnp.sum(jnp.where(mask, loss, 0.0))

    for chunk in (None, 3, 5, 13):
        grads = jax.jit(jax.grad(objective, argnums=(0, 1)), static_argnums=2)(hidden, weights, chunk)
        for got, want in zip(grads, expected):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_cross_entropy_gradients_in_bfloat16_match_autodiff():
    """bf16 hidden states: the fused backward equals autodiff of log_softmax computed the same way
    (bf16 inputs, fp32 logits), to bf16 precision."""
    hidden, weights, targets = _ce_inputs(seed=2)
    hidden = hidden.astype(jnp.bfloat16)

    def fused(h, w):
        return jnp.sum(slm.token_losses(h, w, targets, chunk_size=5)[0])

    def plain(h, w):
        logits = jnp.einsum("btd,dv->btv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    for got, want in zip(jax.grad(fused, argnums=(0, 1))(hidden, weights), jax.grad(plain, argnums=(0, 1))(hidden, weights)):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)


def test_entropy_results_carry_no_gradient():
    hidden, weights, targets = _ce_inputs(seed=3)
    grads = jax.grad(lambda h: jnp.sum(slm.token_losses(h, weights, targets, with_entropy=True)[0]))(hidden)
    assert not np.any(np.asarray(grads))


def test_chunked_program_never_holds_full_logits():
    """With chunking, no [B, T, V] float32 buffer appears in the compiled program's largest temporaries."""
    batch, seq, dim, vocab = 2, 256, 16, 4096
    hidden = jnp.zeros((batch, seq, dim))
    weights = jnp.zeros((dim, vocab))
    targets = jnp.zeros((batch, seq), jnp.int32)

    def temp_bytes(chunk):
        f = jax.jit(jax.grad(lambda h, w: slm.token_losses(h, w, targets, chunk_size=chunk)[0].sum(), argnums=(0, 1)))
        return f.lower(hidden, weights).compile().memory_analysis().temp_size_in_bytes

    full_logits = batch * seq * vocab * 4
    assert temp_bytes(None) >= full_logits
    assert temp_bytes(32) < full_logits / 2


def test_gradient_of_slm_loss_is_the_masked_mean_cross_entropy():
    hidden, weights, targets = _ce_inputs(seed=2)
    ref_loss = jnp.asarray(np.random.default_rng(2).gamma(2.0, 1.0, targets.shape), jnp.float32)
    valid = jnp.asarray(np.random.default_rng(3).random(targets.shape) < 0.9)

    def slm_objective(w):
        loss, _ = slm.token_losses(hidden, w, targets, chunk_size=4)
        selected = slm.select_tokens(slm.token_scores("excess", loss, ref_loss, valid=valid), valid, 0.6)
        return slm.slm_loss(loss, selected, valid)[0], selected

    (_, selected), grad = jax.value_and_grad(slm_objective, has_aux=True)(weights)

    def explicit(w):  # masked mean CE over the selected tokens, written out directly
        logp = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", hidden, w), axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(selected, nll, 0.0)) / jnp.sum(selected)

    np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(explicit)(weights)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01, float("nan"), "0.5", True])
def test_ratio_outside_range_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
        slm.validate_ratio(ratio)


def test_unknown_score_function_and_missing_reference():
    with pytest.raises(ValueError, match=r"Unknown score function 'perplexity'.*'excess'"):
        slm.token_scores("perplexity", jnp.zeros(3))
    with pytest.raises(ValueError, match=r"'reference_entropy' needs ref_entropy"):
        slm.token_scores("reference_entropy", loss=jnp.zeros(3), ref_loss=jnp.zeros(3))


@pytest.mark.parametrize("ratio", [1e-5, 0.99995, 0.123456])
def test_ratio_that_no_small_fraction_represents_is_rejected(ratio):
    with pytest.raises(ValueError, match="is not a fraction with denominator <= 10000"):
        slm.validate_ratio(ratio)


def test_valid_positions_with_infinite_or_nan_scores_still_beat_invalid_ones():
    scores = jnp.asarray([[1.0, -jnp.inf, jnp.nan, 0.5, 2.0]])
    valid = jnp.asarray([[False, True, True, True, False]])
    selected = np.asarray(slm.select_tokens(scores, valid, 1.0))
    np.testing.assert_array_equal(selected, [[False, True, True, True, False]])


def test_bad_loss_at_excluded_positions_does_not_poison_the_metrics():
    loss = jnp.asarray([[1.0, jnp.nan, 3.0, jnp.inf]])
    valid = jnp.asarray([[True, False, True, False]])
    selected = jnp.asarray([[True, False, False, False]])
    value, metrics = slm.slm_loss(loss, selected, valid, ref_loss=loss)
    assert float(value) == 1.0
    assert float(metrics["loss_unselected"]) == 3.0 and float(metrics["loss_all"]) == 2.0
    assert float(metrics["ref_loss"]) == 2.0
