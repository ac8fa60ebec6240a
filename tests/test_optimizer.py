"""Learning-rate schedules, the weight-decay mask and clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rho_jax.models import Llama, ModelConfig
from rho_jax.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer, weight_decay_mask

CFG = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, attention_bias=True)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_decay_to_the_floor(schedule):
    cfg = OptimizerConfig(learning_rate=1e-3, schedule=schedule, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    lr = learning_rate_schedule(cfg)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    end = {"cosine": 1e-4, "linear": 1e-4, "constant": 1e-3}[schedule]
    assert float(lr(110)) == pytest.approx(end, rel=1e-5)
    if schedule == "cosine":
        assert float(lr(60)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-5)  # half-way point


def test_weight_decay_only_on_matrices_that_are_not_embeddings():
    params = nnx.state(Llama(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    flat = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(weight_decay_mask(params, decay_embeddings=False))}
    decayed = sorted(k for k, v in flat.items() if v)
    assert decayed == sorted(f"layers/{block}/{proj}/kernel" for block, proj in [
        ("mlp", "down_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"), ("self_attn", "k_proj"),
        ("self_attn", "o_proj"), ("self_attn", "q_proj"), ("self_attn", "v_proj")])
    with_embeddings = weight_decay_mask(params, decay_embeddings=True)
    assert sum(map(bool, jax.tree.leaves(with_embeddings))) == len(decayed) + 2


@pytest.mark.slow
def test_decay_mask_is_applied_by_the_optimizer():
    """With zero gradients only weight decay moves parameters: norms/biases/embeddings stay put."""
    params = nnx.state(Llama(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=0.1, weight_decay=0.5, total_steps=10, schedule="constant"), params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    for (path, old), (_, now) in zip(nnx.to_flat_state(params), nnx.to_flat_state(new)):
        moved = not np.allclose(np.asarray(old[...]), np.asarray(now[...]))
        assert moved == (path[-1] == "kernel"), path


def test_gradients_are_clipped_by_global_norm():
    """SGD-like settings (b1=b2=0 make Adam's step sign(g)); compare with and without clipping."""
    params = {"w": jnp.ones((2, 2))}
    base = dict(learning_rate=1.0, weight_decay=0.0, b1=0.0, b2=0.0, eps=1e-3, schedule="constant", total_steps=1)
    grads = {"w": jnp.full((2, 2), 10.0)}

    def first_update(clip_norm):
        optimizer = make_optimizer(OptimizerConfig(clip_norm=clip_norm, **base), params)
        return float(optimizer.update(grads, optimizer.init(params), params)[0]["w"][0, 0])

    # Adam with b2=0 divides by |g| + eps: clipping |g| from 10 to 0.5 makes eps matter.
    assert first_update(None) == pytest.approx(-10 / (10 + 1e-3), rel=1e-6)
    assert first_update(1.0) == pytest.approx(-0.5 / (0.5 + 1e-3), rel=1e-6)


def test_bad_optimizer_settings():
    with pytest.raises(ValueError, match="optimizer.schedule must be one of"):
        OptimizerConfig(schedule="step")
    with pytest.raises(ValueError, match=r"warmup_steps \(20\) must be in \[0, total_steps=10\]"):
        OptimizerConfig(warmup_steps=20, total_steps=10)
