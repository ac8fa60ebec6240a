"""LoRA adapters on the stacked rho_jax decoder: representation, merged and unmerged application.

An adapter adds `scale * (x @ a) @ b` to a projection `y = x @ kernel` (rho_jax layout: kernel
`[*in_dims, *out_dims]`, so `a` is `[*in_dims, r]` and `b` is `[r, *out_dims]`; in PEFT's torch
layout `a = lora_A.T` and `b = lora_B.T`). `scale = alpha / r`, or `alpha / sqrt(r)` with rsLoRA.

In memory (`LoraAdapter`) every adapted projection is stacked over layers like the model itself:
`weights["self_attn.q_proj"] = {"lora_a": [L, *in_dims, R], "lora_b": [L, R, *out_dims]}` with
`R` the largest rank of that projection over layers. A layer of smaller rank `r_i` is zero beyond
`r_i` (which adds nothing), and a layer without an adapter has rank 0 and scale 0. The per-layer
ranks and alphas live in `LoraSpec`, so the adapter is exact for any PEFT rank/alpha pattern.

- `merge_lora(model, adapter)`: a plain `Llama` with `kernel + scale * a @ b` computed in float32.
- `with_lora(model, adapter)`: a `Llama` whose adapted projections are `LoraLinear` modules (base
  projection + adapter in the forward), sharing the base weights; `set_lora_dropout` switches
  training-time dropout on for one step, `lora_from_model` reads the adapter back (e.g. after
  training it), `without_lora` returns the base model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rho_jax.models.config import ModelConfig
from rho_jax.models.llama import Llama

# rho_jax projection name -> number of leading input axes of its kernel (per layer).
PROJECTIONS: dict[str, int] = {
    "self_attn.q_proj": 1, "self_attn.k_proj": 1, "self_attn.v_proj": 1, "self_attn.o_proj": 2,
    "mlp.gate_proj": 1, "mlp.up_proj": 1, "mlp.down_proj": 1,
}


ALL_LINEAR = "all-linear"  # PEFT's name for every projection


def projection_names() -> list[str]:
    """The names a target module may have: each projection's short name (`q_proj`) and full name (`self_attn.q_proj`)."""
    return [p.split(".")[1] for p in PROJECTIONS] + list(PROJECTIONS)


def projection_dims(cfg: ModelConfig, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(in_dims, out_dims) of projection `name`'s per-layer kernel in rho_jax layout."""
    d, n, k, h, m = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                     cfg.intermediate_size)
    dims = {
        "self_attn.q_proj": ((d,), (n, h)), "self_attn.k_proj": ((d,), (k, h)), "self_attn.v_proj": ((d,), (k, h)),
        "self_attn.o_proj": ((n, h), (d,)), "mlp.gate_proj": ((d,), (m,)), "mlp.up_proj": ((d,), (m,)),
        "mlp.down_proj": ((m,), (d,)),
    }
    if name not in dims:
        raise ValueError(f"{name!r} is not an adaptable projection; choose from {sorted(PROJECTIONS)}.")
    return dims[name]


def lora_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA); 0 for rank 0 (no adapter)."""
    if rank == 0:
        return 0.0
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


@dataclasses.dataclass(frozen=True)
class LoraTarget:
    """Per-layer rank (0: not adapted in that layer) and alpha of one projection."""

    ranks: tuple[int, ...]
    alphas: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.ranks) != len(self.alphas):
            raise ValueError(f"LoraTarget: {len(self.ranks)} ranks but {len(self.alphas)} alphas.")
        if any(r < 0 for r in self.ranks) or not any(self.ranks):
            raise ValueError(f"LoraTarget: ranks must be >= 0 and not all 0, got {self.ranks}.")

    @property
    def max_rank(self) -> int:
        return max(self.ranks)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What an adapter is: its projections (`PROJECTIONS` names) with per-layer ranks/alphas.

    dropout: PEFT's `lora_dropout`: rate of the dropout on the adapter input in training (see
      `set_lora_dropout`); never applied at inference or when merged.
    """

    targets: Mapping[str, LoraTarget]
    use_rslora: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.targets) - set(PROJECTIONS))
        if unknown or not self.targets:
            raise ValueError(f"LoraSpec targets {unknown or 'nothing'}; choose from {sorted(PROJECTIONS)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if len({len(t.ranks) for t in self.targets.values()}) != 1:
            raise ValueError("LoraSpec: every target must give ranks for the same number of layers.")

    @property
    def num_layers(self) -> int:
        return len(next(iter(self.targets.values())).ranks)

    def scales(self, name: str) -> np.ndarray:
        """float32 `[layers]` scale of projection `name` in each layer (0 where not adapted)."""
        target = self.targets[name]
        return np.array([lora_scale(r, a, self.use_rslora) for r, a in zip(target.ranks, target.alphas)], np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"targets": {k: {"ranks": list(t.ranks), "alphas": list(t.alphas)} for k, t in self.targets.items()},
                "use_rslora": self.use_rslora, "dropout": self.dropout}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSpec:
        targets = {k: LoraTarget(tuple(int(r) for r in t["ranks"]), tuple(float(a) for a in t["alphas"]))
                   for k, t in data["targets"].items()}
        return cls(targets, bool(data.get("use_rslora", False)), float(data.get("dropout", 0.0)))

    @classmethod
    def uniform(cls, cfg: ModelConfig, r: int, alpha: float, target_modules: list[str], use_rslora: bool = False,
                dropout: float = 0.0) -> LoraSpec:
        """Rank `r` and `alpha` on the named projections (`projection_names()` or `all-linear`) of every layer."""
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}.")
        names = {}
        for module in target_modules:
            matches = [p for p in PROJECTIONS if module == ALL_LINEAR or p == module or p.endswith("." + module)]
            if not matches:
                raise ValueError(f"LoRA target module {module!r} names no projection; choose from {projection_names()} "
                                 f"or {ALL_LINEAR!r}.")
            names.update(dict.fromkeys(matches))
        layers = cfg.num_hidden_layers
        return cls({n: LoraTarget((r,) * layers, (float(alpha),) * layers) for n in names}, use_rslora, dropout)


@dataclasses.dataclass
class LoraAdapter:
    """A `LoraSpec` and its stacked weights `{projection: {"lora_a": [L, *in, R], "lora_b": [L, R, *out]}}`."""

    spec: LoraSpec
    weights: dict[str, dict[str, jax.Array]]

    def check_compatible(self, cfg: ModelConfig) -> None:
        """Raise a `ValueError` unless the spec has `cfg`'s layer count and every weight the shape `cfg`'s model needs."""
        if self.spec.num_layers != cfg.num_hidden_layers:
            raise ValueError(f"The LoRA spec gives ranks for {self.spec.num_layers} layers, but this {cfg.architecture} "
                             f"has {cfg.num_hidden_layers}; the adapter was made for a different model.")
        for name, target in self.spec.targets.items():
            in_dims, out_dims = projection_dims(cfg, name)
            layers, rank = cfg.num_hidden_layers, target.max_rank
            expected = {"lora_a": (layers, *in_dims, rank), "lora_b": (layers, rank, *out_dims)}
            for key, shape in expected.items():
                actual = tuple(self.weights[name][key].shape)
                if actual != shape:
                    raise ValueError(
                        f"LoRA {name}.{key} has shape {actual}, but this {cfg.architecture} (hidden_size="
                        f"{cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, layers={layers}) needs {shape}; "
                        "the adapter was made for a different model."
                    )


def init_lora(cfg: ModelConfig, spec: LoraSpec, seed: int = 0, dtype: Any = jnp.float32) -> LoraAdapter:
    """A fresh adapter as PEFT initializes one: a ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming, a=sqrt(5)), b = 0."""
    key = jax.random.key(seed)
    weights = {}
    for name, target in spec.targets.items():
        key, sub = jax.random.split(key)
        in_dims, out_dims = projection_dims(cfg, name)
        bound = 1.0 / math.sqrt(math.prod(in_dims))
        layers, rank = cfg.num_hidden_layers, target.max_rank
        a = jax.random.uniform(sub, (layers, *in_dims, rank), jnp.float32, -bound, bound)
        mask = (np.arange(rank)[None, :] < np.array(target.ranks)[:, None]).reshape(layers, *(1,) * len(in_dims), rank)
        weights[name] = {"lora_a": (a * mask).astype(dtype), "lora_b": jnp.zeros((layers, rank, *out_dims), dtype)}
    return LoraAdapter(spec, weights)


def _new_model(model: Llama) -> Llama:
    """A new module tree with new Variables holding `model`'s (immutable) arrays: no copy, no aliasing."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state))


def _projection_module(model: nnx.Module, name: str) -> tuple[nnx.Module, str]:
    block, proj = name.split(".")
    return getattr(model.layers, block), proj


def _adapted_copy(model: Llama, adapter: LoraAdapter, replace: Callable[[str, nnx.LinearGeneral], nnx.Module]) -> Llama:
    """A new `Llama` (see `_new_model`) in which every projection `name` that `adapter` targets is
    `replace(name, projection)`; refused for a model that already carries adapters."""
    adapter.check_compatible(model.config)
    copy = _new_model(model)
    for name in adapter.spec.targets:
        parent, proj = _projection_module(copy, name)
        linear = getattr(parent, proj)
        if isinstance(linear, LoraLinear):
            raise ValueError(f"{name} already carries an adapter; pass the base model (without_lora(model)).")
        setattr(parent, proj, replace(name, linear))
    return copy


def merge_lora(model: Llama, adapter: LoraAdapter) -> Llama:
    """A new `Llama` with every adapted kernel replaced by `kernel + scale * a @ b` (float32, cast back)."""

    def merged(name: str, linear: nnx.LinearGeneral) -> nnx.LinearGeneral:
        kernel = linear.kernel[...]
        delta = _stacked_delta(adapter.weights[name]["lora_a"], adapter.weights[name]["lora_b"],
                               jnp.asarray(adapter.spec.scales(name)))
        linear.kernel.set_value((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
        return linear

    return _adapted_copy(model, adapter, merged)


@jax.jit
def _stacked_delta(a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
    """float32 `scale[l] * a[l] @ b[l]` for every layer l: `[L, *in, r] x [L, r, *out] -> [L, *in, *out]`."""
    layers, rank = a.shape[0], a.shape[-1]
    a2 = a.astype(jnp.float32).reshape(layers, -1, rank)
    b2 = b.astype(jnp.float32).reshape(layers, rank, -1)
    delta = jnp.einsum("lir,lro->lio", a2, b2, precision=jax.lax.Precision.HIGHEST) * scale[:, None, None]
    return delta.reshape(a.shape[:-1] + b.shape[2:])


# nnx filter of the trainable adapter weights of a `with_lora` model (everything else is the frozen base).
ADAPTER_PARAMS = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("lora_a"), nnx.PathContains("lora_b")))


class LoraScale(nnx.Variable):
    """Fixed (never trained) per-layer LoRA scale, stacked like the layers."""


class LoraDropoutKey(nnx.Variable):
    """Raw PRNG key data `[layers, 2]` (uint32) for one forward pass with LoRA dropout; see `set_lora_dropout`."""


class LoraLinear(nnx.Module):
    """`base(x) + scale * (dropout(x) @ lora_a) @ lora_b`, computed in the base projection's dtype.

    Built by `with_lora` around a stacked `nnx.LinearGeneral`; inside the layer scan each leaf is one
    layer's slice (scale a scalar). Dropout (PEFT's: inverted dropout of the adapter's input at rate
    `dropout`) is applied only while `set_lora_dropout` has given the module keys; otherwise it is
    the identity, as at inference.
    """

    def __init__(self, base: nnx.LinearGeneral, lora_a: jax.Array, lora_b: jax.Array, scale: jax.Array,
                 in_axes: tuple[str, ...], out_axes: tuple[str, ...], dropout: float = 0.0):
        self.base = base
        self.lora_a = nnx.Param(lora_a, out_sharding=("layers", *in_axes, None), eager_sharding=False)
        self.lora_b = nnx.Param(lora_b, out_sharding=("layers", None, *out_axes), eager_sharding=False)
        self.scale = LoraScale(scale, out_sharding=("layers",), eager_sharding=False)
        self.dropout = dropout
        self.dropout_key: LoraDropoutKey | None = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base(x)
        n_in = len(self.base.axis)
        dtype = self.base.dtype or x.dtype
        x = x.astype(dtype)
        if self.dropout_key is not None and self.dropout > 0.0:
            keep = jax.random.bernoulli(jax.random.wrap_key_data(self.dropout_key[...]), 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(dtype)
        a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
        h = jnp.tensordot(x, a, axes=(tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))))
        update = jnp.tensordot(h, b, axes=1)
        return y + (self.scale[...].astype(dtype) * update).astype(y.dtype)


def set_lora_dropout(model: Llama, key: jax.Array | None) -> None:
    """Give every `LoraLinear` of `model` fresh dropout keys drawn from `key` (one per projection and
    layer), in place, for the next training forward pass; `None` turns dropout off (inference)."""
    for index, name in enumerate(PROJECTIONS):
        parent, proj = _projection_module(model, name)
        linear = getattr(parent, proj)
        if isinstance(linear, LoraLinear):
            if key is None:
                linear.dropout_key = nnx.data(None)
            else:
                keys = jax.random.split(jax.random.fold_in(key, index), linear.scale[...].shape[0])
                linear.dropout_key = nnx.data(LoraDropoutKey(jax.random.key_data(keys), out_sharding=("layers", None),
                                                             eager_sharding=False))


def with_lora(model: Llama, adapter: LoraAdapter) -> Llama:
    """A new `Llama` (sharing `model`'s base weights) whose adapted projections are `LoraLinear`.

    The adapter weights keep their dtype and are sharded like the base kernel's input axes (`lora_a`)
    and output axes (`lora_b`); `model` itself is left unchanged.
    """

    def wrapped(name: str, linear: nnx.LinearGeneral) -> LoraLinear:
        kernel_axes = linear.kernel.get_metadata().get("out_sharding") or (None,) * linear.kernel[...].ndim
        n_in = PROJECTIONS[name]
        in_axes, out_axes = tuple(kernel_axes[1:1 + n_in]), tuple(kernel_axes[1 + n_in:])
        weights = adapter.weights[name]
        return LoraLinear(linear, jnp.asarray(weights["lora_a"]), jnp.asarray(weights["lora_b"]),
                          jnp.asarray(adapter.spec.scales(name)), in_axes, out_axes, adapter.spec.dropout)

    return _adapted_copy(model, adapter, wrapped)


def lora_from_model(model: Llama, spec: LoraSpec) -> LoraAdapter:
    """The adapter currently inside a `with_lora` model (e.g. after training its `lora_a`/`lora_b`)."""
    weights = {}
    for name in spec.targets:
        parent, proj = _projection_module(model, name)
        linear = getattr(parent, proj)
        if not isinstance(linear, LoraLinear):
            raise ValueError(f"{name} of this model carries no adapter (the spec names it).")
        weights[name] = {"lora_a": linear.lora_a[...], "lora_b": linear.lora_b[...]}
    return LoraAdapter(spec, weights)


def adapter_params(adapter: LoraAdapter) -> dict[str, Any]:
    """The adapter's weights as the pure dict of a `with_lora` model's `ADAPTER_PARAMS` state:
    `{"layers": {block: {projection: {"lora_a": ..., "lora_b": ...}}}}`."""
    tree: dict[str, Any] = {}
    for name, pair in adapter.weights.items():
        block, proj = name.split(".")
        tree.setdefault(block, {})[proj] = {"lora_a": pair["lora_a"], "lora_b": pair["lora_b"]}
    return {"layers": tree}


def adapter_from_params(spec: LoraSpec, params: Mapping[str, Any]) -> LoraAdapter:
    """The adapter of `spec` whose weights are `params` (laid out as `adapter_params` returns them)."""
    weights = {}
    for name in spec.targets:
        block, proj = name.split(".")
        pair = params["layers"][block][proj]
        weights[name] = {"lora_a": pair["lora_a"], "lora_b": pair["lora_b"]}
    return LoraAdapter(spec, weights)


def without_lora(model: Llama) -> Llama:
    """A new `Llama` with every `LoraLinear` replaced by its base projection (weights shared)."""
    base = _new_model(model)
    for name in PROJECTIONS:
        parent, proj = _projection_module(base, name)
        linear = getattr(parent, proj)
        if isinstance(linear, LoraLinear):
            setattr(parent, proj, linear.base)
    return base
