"""Structural contracts of the model that later layers (sharding, runtime) rely on."""

from __future__ import annotations

import subprocess
import sys

from flax import nnx

from rho_jax.models import Llama, ModelConfig, ModelOptions
from rho_jax.models.params import abstract_model

LOGICAL_AXES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "layers"}


def test_every_parameter_has_one_logical_axis_name_per_dimension():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    _, params = abstract_model(cfg, ModelOptions())
    assert len(params) == 3 + 7 * 2 + 2  # embed, final norm, lm_head; 7 kernels + 7 biases; 2 layer norms
    for path, variable in params.items():
        axes = variable.get_metadata()["out_sharding"]
        assert len(axes) == variable.get_value().ndim, path
        assert set(axes) <= LOGICAL_AXES, (path, axes)
        assert (axes[0] == "layers") == (path[0] == "layers"), (path, axes)
    assert params[("layers", "self_attn", "q_proj", "kernel")].get_metadata()["out_sharding"] == (
        "layers", "embed", "heads", "head_dim")
    assert params[("layers", "self_attn", "k_proj", "bias")].get_metadata()["out_sharding"] == (
        "layers", "kv_heads", "head_dim")


def test_runtime_modules_never_import_torch():
    code = "import sys, rho_jax.models, rho_jax.convert; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_model_state_is_only_parameters():
    """No hidden non-parameter state (caches, rng counters) that checkpoints would have to carry."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    everything = nnx.to_flat_state(nnx.state(model))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(everything) == len(params)
