"""Llama 1/2/3 and Mistral decoder in flax.nnx, numerically equivalent to `transformers`.

Layer parameters are always stored stacked along a leading `layers` axis (one `DecoderLayer`
created under `nnx.vmap`), so checkpoints do not depend on how the forward pass iterates:
`ModelOptions.scan_layers` runs them with `jax.lax.scan`, otherwise with an unrolled Python loop.

Every parameter carries logical axis names in its `out_sharding` metadata (`vocab`, `embed`,
`heads`, `kv_heads`, `head_dim`, `mlp`, `norm`, `layers`); a rules table maps them to mesh axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rho_jax.models.attention import ATTENTION_IMPLEMENTATIONS, attend
from rho_jax.models.attention_kernels.mask import DocumentMask
from rho_jax.models.config import ModelConfig
from rho_jax.models.remat import REMAT_POLICIES, remat_layer
from rho_jax.models.rope import apply_rotary, inverse_frequencies, rotary_cos_sin
from rho_jax.sharding import constrain_batch_axis


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """How the model computes (not what it is): dtypes, layer iteration, remat, attention kernel.

    dtype: compute dtype of activations and matmuls (bf16 on accelerators); norms, softmax, rotary
      and logits are always computed in float32.
    param_dtype: storage dtype of parameters (float32 master weights by default).
    scan_layers: iterate layers with `jax.lax.scan` (fast compile) instead of an unrolled loop.
    remat: a name from `REMAT_POLICIES` applied to each decoder layer.
    attention: one of `ATTENTION_IMPLEMENTATIONS` (see `rho_jax.models.attention`): "auto" (splash
      on TPU, flash on GPU, grouped or blockwise by sequence length on CPU), "grouped", "xla",
      "cudnn", "blockwise", "flash", "splash".
    """

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = True
    remat: str = "none"
    attention: str = "auto"

    def __post_init__(self) -> None:
        for name in ("dtype", "param_dtype"):
            try:
                dtype = jnp.dtype(getattr(self, name))
            except TypeError as err:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not a dtype name.") from err
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"{name} must be a floating dtype (float32, bfloat16, float16), got {dtype}.")
            object.__setattr__(self, name, dtype)
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"Unknown remat policy {self.remat!r}; choose one of {sorted(REMAT_POLICIES)}.")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}.")


def _axes(names: tuple[str, ...]) -> dict[str, Any]:
    """Variable metadata recording logical axis names; placement is decided later from a rules table."""
    return {"out_sharding": names, "eager_sharding": False}


def _param(init: nnx.Initializer, rngs: nnx.Rngs, shape: tuple[int, ...], dtype: Any, axes: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype), **_axes(axes))


def _projection(
    in_features: int | tuple[int, ...],
    out_features: int | tuple[int, ...],
    kernel_axes: tuple[str, ...],
    use_bias: bool,
    cfg: ModelConfig,
    opts: ModelOptions,
    rngs: nnx.Rngs,
) -> nnx.LinearGeneral:
    """Linear map with kernel `[*in_features, *out_features]` and logical axes `kernel_axes`."""
    n_in = len(in_features) if isinstance(in_features, tuple) else 1
    return nnx.LinearGeneral(
        in_features,
        out_features,
        axis=tuple(range(-n_in, 0)),
        use_bias=use_bias,
        dtype=opts.dtype,
        param_dtype=opts.param_dtype,
        kernel_init=nnx.initializers.normal(cfg.initializer_range),
        kernel_metadata=_axes(kernel_axes),
        bias_metadata=_axes(kernel_axes[n_in:]),
        rngs=rngs,
    )


def resolve_options(options: ModelOptions | None, dtype: Any = None, param_dtype: Any = None) -> ModelOptions:
    """`options` (default `ModelOptions()`) with `dtype` / `param_dtype` replaced where given."""
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    return dataclasses.replace(options or ModelOptions(), **overrides)


class RMSNorm(nnx.Module):
    """y = weight * (x / sqrt(mean(x^2) + eps)), normalized in float32 and cast back before scaling."""

    def __init__(self, dim: int, eps: float, opts: ModelOptions):
        self.weight = nnx.Param(jnp.ones((dim,), opts.param_dtype), **_axes(("norm",)))
        self.eps = eps
        self.dtype = opts.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * normed.astype(self.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings; K/V heads are shared by groups of Q heads."""

    def __init__(self, cfg: ModelConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = _projection(d, (n, h), ("embed", "heads", "head_dim"), bias, cfg, opts, rngs)
        self.k_proj = _projection(d, (k, h), ("embed", "kv_heads", "head_dim"), bias, cfg, opts, rngs)
        self.v_proj = _projection(d, (k, h), ("embed", "kv_heads", "head_dim"), bias, cfg, opts, rngs)
        self.o_proj = _projection((n, h), d, ("heads", "head_dim", "embed"), bias, cfg, opts, rngs)
        self.implementation = opts.attention

    def __call__(self, x: jax.Array, mask: DocumentMask, cos: jax.Array, sin: jax.Array) -> jax.Array:
        q, k, v = self.project(x, cos, sin)
        return self.o_proj(attend(q, k, v, mask, self.implementation))

    def project(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Rotated queries `[B, T, N, H]`, rotated keys and values `[B, T, K, H]` of `x [B, T, hidden]`."""
        return apply_rotary(self.q_proj(x), cos, sin), apply_rotary(self.k_proj(x), cos, sin), self.v_proj(x)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        d, m, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = _projection(d, m, ("embed", "mlp"), bias, cfg, opts, rngs)
        self.up_proj = _projection(d, m, ("embed", "mlp"), bias, cfg, opts, rngs)
        self.down_proj = _projection(m, d, ("mlp", "embed"), bias, cfg, opts, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, cfg: ModelConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, opts)
        self.self_attn = Attention(cfg, opts, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, opts)
        self.mlp = MLP(cfg, opts, rngs=rngs)

    def __call__(self, x: jax.Array, mask: DocumentMask, cos: jax.Array, sin: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), mask, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


def _document_starts(segment_ids: jax.Array) -> jax.Array:
    """True where a new document begins: the first token of a row and every change of segment id."""
    first = jnp.ones_like(segment_ids[:, :1], bool)
    return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def document_index(segment_ids: jax.Array) -> jax.Array:
    """Running count of documents along each row; a document is a maximal run of one segment id.

    `[1,1,2,2,1,1]` -> `[0,0,1,1,2,2]`: a repeated id that is not contiguous is a new document.
    """
    return jnp.cumsum(_document_starts(segment_ids), axis=1) - 1


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its document (0 at each document start)."""
    seq = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
    start_index = jax.lax.cummax(jnp.where(_document_starts(segment_ids), seq, 0), axis=1)
    return seq - start_index


def attention_mask(seq_len: int, segment_ids: jax.Array | None, sliding_window: int | None) -> jax.Array:
    """Boolean mask `[batch|1, 1, seq, seq]`: key j is visible to query i iff j <= i, both lie in
    the same document (`document_index`), and (with a sliding window w) i - j < w: the dense form
    of `document_mask`."""
    return document_mask(segment_ids, sliding_window).dense(seq_len)


def document_mask(segment_ids: jax.Array | None, sliding_window: int | None) -> DocumentMask:
    """The causal mask within the documents of `segment_ids` (`document_index`) and the sliding window,
    in the structured form the attention kernels take."""
    return DocumentMask(None if segment_ids is None else document_index(segment_ids), sliding_window)


class Llama(nnx.Module):
    """Decoder-only LM. `model(input_ids, segment_ids=None, positions=None)` -> float32 logits `[B, T, V]`.

    segment_ids `[B, T]`: packed documents; each maximal run of one id is a document, and tokens
      attend only within their own document (padding may use its own id, e.g. 0).
    positions `[B, T]`: rotary positions; by default 0..T-1, or restarting at each new segment.
    """

    def __init__(self, cfg: ModelConfig, opts: ModelOptions = ModelOptions(), *, rngs: nnx.Rngs):
        self.config = cfg
        self.options = opts
        init = nnx.initializers.normal(cfg.initializer_range)
        d = cfg.hidden_size
        self.embed_tokens = _param(init, rngs, (cfg.vocab_size, d), opts.param_dtype, ("vocab", "embed"))

        @nnx.split_rngs(splits=cfg.num_hidden_layers)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(layer_rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(cfg, opts, rngs=layer_rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(d, cfg.rms_norm_eps, opts)
        self.lm_head = (None if cfg.tie_word_embeddings
                        else _param(init, rngs, (d, cfg.vocab_size), opts.param_dtype, ("embed", "vocab")))

    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        return self.logits(self.hidden_states(input_ids, segment_ids, positions))

    def hidden_states(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Final-norm hidden states `[B, T, hidden]` in the compute dtype (input to the LM head)."""
        cfg, opts = self.config, self.options
        batch, seq_len = input_ids.shape
        if positions is None:
            if segment_ids is None:
                positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
            else:
                positions = positions_from_segments(segment_ids)
        cos, sin = rotary_cos_sin(positions, inverse_frequencies(cfg.rope_parameters, cfg.head_dim))
        mask = document_mask(segment_ids, cfg.sliding_window)
        x = constrain_batch_axis(self.embed(input_ids))

        graphdef, stacked = nnx.split(self.layers)

        def run_layer(h: jax.Array, layer_state: nnx.State) -> tuple[jax.Array, None]:
            return constrain_batch_axis(nnx.merge(graphdef, layer_state)(h, mask, cos, sin)), None

        run_layer = remat_layer(run_layer, opts.remat, prevent_cse=not opts.scan_layers)
        if opts.scan_layers:
            x, _ = jax.lax.scan(run_layer, x, stacked)
        else:
            for i in range(cfg.num_hidden_layers):
                x, _ = run_layer(x, jax.tree.map(lambda p, i=i: p[i], stacked))
        return self.norm(x)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Input embeddings of `input_ids` (any shape) in the compute dtype."""
        return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.options.dtype)

    def output_embedding(self) -> jax.Array:
        """LM-head matrix `[hidden, vocab]` (the transposed input embedding when tied)."""
        if self.lm_head is None:
            return self.embed_tokens[...].T
        return self.lm_head[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits = hidden @ output_embedding, accumulated in float32."""
        weights = self.output_embedding().astype(self.options.dtype)
        return jnp.einsum("btd,dv->btv", hidden, weights, preferred_element_type=jnp.float32)
