"""The jitted, sharded SLM train step on 8 simulated CPU devices."""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import pytest
from flax import nnx

from rho_jax import slm
from rho_jax.batch import batch_from_tokens
from rho_jax.models import Llama, ModelConfig
from rho_jax.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from rho_jax.sharding import MeshConfig, batch_sharding, make_mesh, param_shardings
from rho_jax.slm import SLMConfig, check_reference
from rho_jax.step import build_train_step, init_train_state, jit_train_step, place_reference

MODEL = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)
# Weak-to-strong: a smaller reference sharing the vocabulary.
REFERENCE = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, rms_norm_eps=1e-5)
OPTIMIZER = OptimizerConfig(learning_rate=3e-3, warmup_steps=1, total_steps=20, clip_norm=1.0)


def mesh_of(shape):
    return make_mesh(MeshConfig(*shape), jax.devices()[: math.prod(shape)])


def make_batch(seed=0, rows=8, seq=24):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 64, (rows, seq + 1))
    segments = np.ones((rows, seq + 1), np.int32)
    segments[:, 15:] = 2
    segments[1, 20:] = 0  # padding
    loss_mask = np.ones((rows, seq + 1), bool)
    loss_mask[2, :6] = False  # a masked prompt
    return batch_from_tokens(tokens, segments, loss_mask)


def run_steps(mesh_shape, slm_cfg, batch, steps=2, accumulation=1, with_reference=True):
    model = Llama(MODEL, rngs=nnx.Rngs(0))
    reference = Llama(REFERENCE, rngs=nnx.Rngs(1)) if with_reference else None
    check_reference(slm_cfg, reference is not None, MODEL.vocab_size, None if reference is None else REFERENCE.vocab_size)
    mesh = mesh_of(mesh_shape)
    optimizer = make_optimizer(OPTIMIZER, nnx.state(model, nnx.Param))
    state, shardings = init_train_state(model, optimizer, mesh)
    ref_params, ref_shardings = place_reference(reference, mesh) if with_reference else (None, None)
    step = build_train_step(nnx.graphdef(model), nnx.graphdef(reference) if with_reference else None,
                            slm_cfg, optimizer, learning_rate_schedule(OPTIMIZER), accumulation)
    train_step = jit_train_step(step, shardings, ref_shardings, mesh, tuple(batch))
    history = []
    for _ in range(steps):
        state, metrics = train_step(state, batch, ref_params)
        history.append({k: float(v) for k, v in metrics.items()})
    params = {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(state.params)}
    return history, params


def selected_mask(mesh_shape, slm_cfg, batch):
    """The step's selection, computed by the same functions under the same shardings."""
    model, reference = Llama(MODEL, rngs=nnx.Rngs(0)), Llama(REFERENCE, rngs=nnx.Rngs(1))
    mesh = mesh_of(mesh_shape)
    params = nnx.state(model, nnx.Param)
    ref_params = nnx.state(reference, nnx.Param)

    def select(p, rp, b):
        losses = []
        for graphdef, ps in ((nnx.graphdef(model), p), (nnx.graphdef(reference), rp)):
            m = nnx.merge(graphdef, ps)
            h = m.hidden_states(b["input_ids"], b["segment_ids"])
            losses.append(slm.token_losses(h, m.output_embedding(), b["targets"], chunk_size=8)[0])
        return slm.select_by_score("excess", slm_cfg.ratio, b["valid"], loss=losses[0], ref_loss=losses[1])

    shardings = (param_shardings(params, mesh), param_shardings(ref_params, mesh), {k: batch_sharding(mesh) for k in batch})
    return np.asarray(jax.jit(select, in_shardings=shardings)(params, ref_params, batch))


MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2), (2, 1, 4)]


@pytest.fixture(scope="module")
def single_device_run():
    batch = make_batch()
    cfg = SLMConfig(ratio=0.6, ce_chunk_size=8)
    return batch, cfg, run_steps((1, 1, 1), cfg, batch), selected_mask((1, 1, 1), cfg, batch)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", MESHES[1:], ids=str)
def test_mesh_shape_changes_nothing(single_device_run, mesh_shape):
    batch, cfg, (history, params), mask = single_device_run
    np.testing.assert_array_equal(selected_mask(mesh_shape, cfg, batch), mask)
    sharded_history, sharded_params = run_steps(mesh_shape, cfg, batch)
    for expected, got in zip(history, sharded_history):
        assert got["num_selected"] == expected["num_selected"]
        for key in ("loss_selected", "loss_unselected", "loss_all", "ref_loss", "grad_norm"):
            np.testing.assert_allclose(got[key], expected[key], rtol=2e-5, err_msg=key)
    # Adam divides by sqrt(v): fp32 rounding of near-zero gradients (different reduction order per
    # mesh) moves a few elements by ~1e-6, against a per-step update of up to lr = 3e-3.
    for path, value in params.items():
        np.testing.assert_allclose(sharded_params[path], value, atol=2e-5, rtol=1e-4, err_msg=str(path))


@pytest.mark.slow
def test_selection_counts_and_metrics(single_device_run):
    batch, cfg, (history, _), mask = single_device_run
    n_valid = int(batch["valid"].sum())
    assert history[0]["num_valid"] == n_valid
    assert history[0]["num_selected"] == mask.sum() == math.ceil(0.6 * n_valid)
    assert not (mask & ~batch["valid"]).any()
    assert history[0]["learning_rate"] == 0.0 and history[1]["learning_rate"] == pytest.approx(3e-3)


@pytest.mark.slow
def test_clm_is_the_ordinary_mean_cross_entropy():
    batch = make_batch(seed=1)
    history, _ = run_steps((2, 2, 2), SLMConfig(ratio=1.0), batch, steps=1, with_reference=False)
    model = Llama(MODEL, rngs=nnx.Rngs(0))
    logp = jax.nn.log_softmax(model(batch["input_ids"], segment_ids=batch["segment_ids"]), axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(history[0]["loss_selected"], nll[batch["valid"]].mean(), rtol=1e-5)
    assert history[0]["selected_fraction"] == 1.0 and "ref_loss" not in history[0]


@pytest.mark.slow
def test_accumulation_keeps_global_selection():
    """Two micro-batches with global scope = one batch: same selection, loss and update."""
    batch, cfg = make_batch(seed=2), SLMConfig(ratio=0.6, ce_chunk_size=8)
    whole, whole_params = run_steps((2, 2, 1), cfg, batch, steps=1)
    accumulated, acc_params = run_steps((2, 2, 1), cfg, batch, steps=1, accumulation=2)
    assert accumulated[0]["num_selected"] == whole[0]["num_selected"]
    np.testing.assert_allclose(accumulated[0]["loss_selected"], whole[0]["loss_selected"], rtol=1e-5)
    for path, value in whole_params.items():
        np.testing.assert_allclose(acc_params[path], value, atol=2e-5, rtol=1e-4, err_msg=str(path))


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["microbatch", "sequence"])
def test_narrower_scopes_select_per_part(scope):
    batch = make_batch(seed=3)
    history, _ = run_steps((1, 2, 1), SLMConfig(ratio=0.3, scope=scope, ce_chunk_size=8), batch, steps=1, accumulation=2)
    valid = batch["valid"]
    parts = [valid[0::2], valid[1::2]] if scope == "microbatch" else valid  # micro-batch i = rows i, i+2, ...
    assert history[0]["num_selected"] == sum(math.ceil(0.3 * int(p.sum())) for p in parts)


@pytest.mark.slow
@pytest.mark.parametrize("score", ["reference_loss", "reference_entropy", "intersection"])
def test_reference_only_scores_train(score):
    history, _ = run_steps((2, 1, 1), SLMConfig(ratio=0.5, score=score, ce_chunk_size=8), make_batch(seed=4), steps=1)
    fraction = history[0]["selected_fraction"]
    assert (0 < fraction <= 0.5 + 1e-6) if score == "intersection" else fraction == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_training_reduces_the_slm_loss():
    history, _ = run_steps((2, 2, 2), SLMConfig(ratio=0.6, ce_chunk_size=8), make_batch(seed=5), steps=12)
    assert history[-1]["loss_selected"] < history[0]["loss_selected"] - 0.3
    assert history[-1]["loss_all"] < history[0]["loss_all"]


@pytest.mark.slow
def test_activations_are_split_over_the_batch_shards():
    """On 8-way fsdp with 16 rows, each device runs 2 rows through the MLP (not all 16)."""
    model, reference = Llama(MODEL, rngs=nnx.Rngs(0)), Llama(REFERENCE, rngs=nnx.Rngs(1))
    mesh = mesh_of((1, 8, 1))
    optimizer = make_optimizer(OPTIMIZER, nnx.state(model, nnx.Param))
    state, shardings = init_train_state(model, optimizer, mesh)
    ref_params, ref_shardings = place_reference(reference, mesh)
    batch = make_batch(rows=16)
    for accumulation, rows_per_device in ((1, "2"), (2, "1")):
        step = build_train_step(nnx.graphdef(model), nnx.graphdef(reference), SLMConfig(ce_chunk_size=8),
                                optimizer, learning_rate_schedule(OPTIMIZER), accumulation)
        hlo = jit_train_step(step, shardings, ref_shardings, mesh, tuple(batch)).lower(
            state, batch, ref_params).compile().as_text()
        mlp_rows = set(re.findall(r"f32\[(\d+),24,48\]", hlo))
        assert rows_per_device in mlp_rows and "16" not in mlp_rows and "8" not in mlp_rows, mlp_rows


def test_invalid_combinations_fail_clearly():
    model = Llama(MODEL, rngs=nnx.Rngs(0))
    other_vocab = Llama(ModelConfig(vocab_size=65, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="reference vocab_size 65 != model vocab_size 64.*tokenizer"):
        check_reference(SLMConfig(), True, model.config.vocab_size, other_vocab.config.vocab_size)
    with pytest.raises(ValueError, match="slm.ratio=0.6 .* needs a reference model"):
        check_reference(SLMConfig(ratio=0.6), False)
    with pytest.raises(ValueError, match="'reference_entropy' is computed from a reference model"):
        check_reference(SLMConfig(ratio=1.0, score="reference_entropy"), False)
    with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
        SLMConfig(ratio=1.5)
    with pytest.raises(ValueError, match="slm.scope must be one of"):
        SLMConfig(scope="document")
    with pytest.raises(ValueError, match="Unknown score function 'loss'"):
        SLMConfig(score="loss")
    with pytest.raises(ValueError, match="slm.ratio=0.5 .* needs a reference model"):
        build_train_step(nnx.graphdef(model), None, SLMConfig(ratio=0.5), make_optimizer(OPTIMIZER, {}),
                         learning_rate_schedule(OPTIMIZER))
    with pytest.raises(ValueError, match="mesh .* uses 6 devices, but 8 are available"):
        make_mesh(MeshConfig(2, 3, 1))
