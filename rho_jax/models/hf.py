"""Hugging Face <-> rho_jax: configs and weights of `LlamaForCausalLM` / `MistralForCausalLM`.

Weights are read from safetensors one parameter at a time and written with
`safetensors.numpy`; torch is never imported. Layout conventions:
- HF `nn.Linear.weight` is `[out, in]`; rho_jax kernels are `[*in_dims, *out_dims]` (e.g. q_proj
  `[embed, heads, head_dim]`, o_proj `[heads, head_dim, embed]`), so a kernel is `W.T` reshaped.
- HF stores one tensor per layer (`model.layers.{i}...`); rho_jax stacks layers on axis 0.
- HF q/k weights are already permuted for the rotate-half rotary convention used here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from rho_jax.models.atomic_dir import atomic_directory, copy_tokenizer_files
from rho_jax.models.config import CONFIG_FILE, ModelConfig
from rho_jax.models.llama import Llama, ModelOptions, resolve_options
from rho_jax.models.params import ParamPath, model_from_arrays
from rho_jax.models.safetensors_io import INDEX_FILE, SINGLE_FILE, SafetensorsCheckpoint

# Tensors some HF checkpoints carry that hold no learned parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One HF tensor name (per layer if it contains `{layer}`) <-> one rho_jax parameter path.

    kernel_in_axes: for linear kernels, how many leading rho_jax axes are input axes (HF stores the
    transposed, flattened `[out, in]` matrix); None for tensors stored in the same order.
    """

    hf_name: str
    path: ParamPath
    kernel_in_axes: int | None = None

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.hf_name

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """HF shape of the tensor whose (per-layer) rho_jax shape is `shape`."""
        if self.kernel_in_axes is None:
            return (math.prod(shape),) if self.path[-1] == "bias" else shape
        n = self.kernel_in_axes
        return (math.prod(shape[n:]), math.prod(shape[:n]))

    def to_rho(self, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return (tensor if self.kernel_in_axes is None else tensor.T).reshape(shape)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        hf_shape = self.hf_shape(array.shape)
        if self.kernel_in_axes is None:
            return array.reshape(hf_shape)
        return np.ascontiguousarray(array.reshape(hf_shape[::-1]).T)


def tensor_mappings(cfg: ModelConfig) -> list[TensorMapping]:
    """Every parameter of `cfg`'s model, in HF checkpoint order."""
    layer = "model.layers.{layer}."
    maps = [TensorMapping("model.embed_tokens.weight", ("embed_tokens",))]
    linear = [("self_attn", "q_proj", 1), ("self_attn", "k_proj", 1), ("self_attn", "v_proj", 1),
              ("self_attn", "o_proj", 2), ("mlp", "gate_proj", 1), ("mlp", "up_proj", 1), ("mlp", "down_proj", 1)]
    for block, proj, in_axes in linear:
        maps.append(TensorMapping(f"{layer}{block}.{proj}.weight", ("layers", block, proj, "kernel"), in_axes))
        has_bias = cfg.attention_bias if block == "self_attn" else cfg.mlp_bias
        if has_bias:
            maps.append(TensorMapping(f"{layer}{block}.{proj}.bias", ("layers", block, proj, "bias")))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        maps.append(TensorMapping(f"{layer}{norm}.weight", ("layers", norm, "weight")))
    maps.append(TensorMapping("model.norm.weight", ("norm", "weight")))
    if not cfg.tie_word_embeddings:
        maps.append(TensorMapping("lm_head.weight", ("lm_head",), kernel_in_axes=1))
    return maps


def read_hf_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` of the HF model directory `path` (its `config.json`).

    Raises `FileNotFoundError` if `path` or its config.json is absent, and a `ValueError` naming the
    config.json (and the field, where one is at fault) if it is not valid JSON or describes no supported model.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; expected a Hugging Face model directory.")
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}; expected a Hugging Face model directory.")
    return ModelConfig.from_file(config_file)


def _hf_names(mapping: TensorMapping, cfg: ModelConfig) -> list[str]:
    if mapping.per_layer:
        return [mapping.hf_name.format(layer=i) for i in range(cfg.num_hidden_layers)]
    return [mapping.hf_name]


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked: jax.Array, layer: jax.Array, index: int) -> jax.Array:
    """stacked[index] = layer, updating the donated buffer in place."""
    return stacked.at[index].set(layer)


def load_hf(
    path: str | Path,
    dtype: Any = None,
    param_dtype: Any = None,
    options: ModelOptions | None = None,
) -> Llama:
    """Load a local HF Llama/Mistral directory (config.json + safetensors) into a `Llama`.

    `dtype`/`param_dtype` set the compute and storage dtypes (default float32), overriding those
    of `options` (default `ModelOptions()`). Parameters
    are read and converted one at a time: host memory peaks at one stacked parameter (plus one
    per-layer tensor) beyond the model itself, never two copies of the model.

    Raises a `ValueError` naming the file at fault: config.json (see `read_hf_config`), or the
    safetensors file, tensor, its shape and the shape the config implies when weights and config disagree.
    """
    path = Path(path)
    cfg = read_hf_config(path)
    opts = resolve_options(options, dtype, param_dtype)
    checkpoint = SafetensorsCheckpoint(path)
    mappings = {m.path: m for m in tensor_mappings(cfg)}
    expected_names = {name for m in mappings.values() for name in _hf_names(m, cfg)}
    unexpected = sorted(n for n in checkpoint.names() - expected_names
                        if not n.endswith(_IGNORED_SUFFIXES) and not (cfg.tie_word_embeddings and n == "lm_head.weight"))
    if unexpected:
        raise ValueError(
            f"{path}: tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} are not part of a "
            f"{cfg.architecture} with this config.json (attention_bias={cfg.attention_bias}, "
            f"mlp_bias={cfg.mlp_bias}, tie_word_embeddings={cfg.tie_word_embeddings})."
        )

    def read(name: str, shape: tuple[int, ...], mapping: TensorMapping) -> np.ndarray:
        """HF tensor `name` as a rho_jax array of `shape`; a `ValueError` naming it if absent or misshaped."""
        expected = mapping.hf_shape(shape)
        if name not in checkpoint:
            raise ValueError(f"{path}: missing tensor {name!r} (expected shape {expected}).")
        if checkpoint.shape(name) != expected:
            raise ValueError(
                f"{checkpoint.file_of(name)}: tensor {name!r} has shape {checkpoint.shape(name)}, expected {expected} "
                f"for the model that {path / CONFIG_FILE} describes; the weights and config.json are of different models."
            )
        return mapping.to_rho(checkpoint.tensor(name), shape)

    def load(param_path: ParamPath, expected: jax.ShapeDtypeStruct) -> jax.Array:
        mapping = mappings[param_path]
        if not mapping.per_layer:
            return jnp.asarray(read(mapping.hf_name, expected.shape, mapping), dtype=expected.dtype)
        stacked = jnp.zeros(expected.shape, expected.dtype)
        for i, name in enumerate(_hf_names(mapping, cfg)):
            layer = read(name, expected.shape[1:], mapping).astype(expected.dtype, copy=False)
            stacked = _set_layer(stacked, layer, i)
        return stacked

    return model_from_arrays(cfg, opts, load)


def _hf_tensors(model: Llama, dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) pairs in checkpoint order, fetching one stacked parameter at a time."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for mapping in tensor_mappings(model.config):
        array = np.asarray(jax.device_get(flat[mapping.path][...]))
        if mapping.per_layer:
            for i, name in enumerate(_hf_names(mapping, model.config)):
                yield name, mapping.to_hf(array[i]).astype(dtype)
        else:
            yield mapping.hf_name, mapping.to_hf(array).astype(dtype)


def plan_shards(model: Llama, dtype: np.dtype, max_shard_bytes: int) -> dict[str, int]:
    """Shard number (0-based) of every HF tensor: consecutive tensors fill a shard up to `max_shard_bytes`."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    plan, shard, used = {}, 0, 0
    for mapping in tensor_mappings(model.config):
        shape = flat[mapping.path][...].shape
        names = _hf_names(mapping, model.config)
        nbytes = math.prod(shape) * dtype.itemsize // len(names)
        for name in names:
            if used and used + nbytes > max_shard_bytes:
                shard, used = shard + 1, 0
            plan[name] = shard
            used += nbytes
    return plan


def _shard_file_name(index: int, total: int) -> str:
    return SINGLE_FILE if total == 1 else f"model-{index + 1:05d}-of-{total:05d}.safetensors"


def save_hf(
    model: Llama,
    path: str | Path,
    dtype: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Write `model` as an HF directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    dtype: storage dtype (default: the parameters' dtype), e.g. "bfloat16".
    max_shard_bytes: larger models are split into `model-0000i-of-0000n.safetensors` + index;
      host memory holds at most one shard plus one stacked parameter at a time.
    tokenizer_from: a directory whose tokenizer files are copied along.
    The directory is written in a staging folder and moved into place when complete, so an
    interrupted save never leaves a half-written model at `path`.
    """
    path = Path(path)
    np_dtype = np.dtype(jnp.dtype(dtype if dtype is not None else model.options.param_dtype))
    plan = plan_shards(model, np_dtype, max_shard_bytes)
    n_shards = max(plan.values()) + 1
    with atomic_directory(path) as staging:
        shard: dict[str, np.ndarray] = {}
        total_bytes = 0

        def flush() -> None:
            file_name = _shard_file_name(plan[next(iter(shard))], n_shards)
            save_file(shard, str(staging / file_name), metadata={"format": "pt"})
            shard.clear()

        for name, tensor in _hf_tensors(model, np_dtype):
            if shard and plan[name] != plan[next(iter(shard))]:
                flush()
            shard[name] = tensor
            total_bytes += tensor.nbytes
        flush()
        if n_shards > 1:
            weight_map = {name: _shard_file_name(i, n_shards) for name, i in plan.items()}
            index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2))
        hf_config = model.config.to_hf_dict(dtype=np_dtype.name)
        (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2))
        if tokenizer_from is not None:
            copy_tokenizer_files(tokenizer_from, staging)
    return path
