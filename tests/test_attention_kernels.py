"""Blockwise XLA, flash (Pallas GPU) and splash (Pallas TPU, interpret mode on CPU) attention against
the dense grouped implementation and NumPy: outputs and gradients with packed documents, GQA,
sliding windows, fp32 and bf16; `auto`'s choice per backend with a mocked backend; the model and the
SLM reference losses through each kernel."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rho_jax import slm
from rho_jax.models import attention
from rho_jax.models.attention import attend, choose_implementation, grouped_attention
from rho_jax.models.attention_kernels.blockwise import blockwise_attention
from rho_jax.models.attention_kernels.flash import flash_attention
from rho_jax.models.attention_kernels.mask import DocumentMask
from rho_jax.models.attention_kernels.splash import splash_attention
from rho_jax.models.config import ModelConfig
from rho_jax.models.llama import Llama, ModelOptions, document_mask

BF16_TOLERANCE = dict(rtol=3e-2, atol=3e-2)
FP32_TOLERANCE = dict(rtol=2e-5, atol=2e-5)


def _segments(rng, batch, seq, docs=4):
    """Packed rows: sorted document ids with a repeated id after a different one (a new document)."""
    ids = np.sort(rng.integers(1, docs + 1, size=(batch, seq)), axis=1)
    ids[0, -seq // 8:] = 1  # id 1 again at the end: a separate document
    return jnp.asarray(ids)


def _inputs(seed, batch, seq, heads, kv_heads, head_dim, window, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, seq, n, head_dim)), dtype) for n in (heads, kv_heads, kv_heads))
    weights = jnp.asarray(rng.normal(size=(batch, seq, heads, head_dim)), jnp.float32)
    return q, k, v, weights, document_mask(_segments(rng, batch, seq), window)


def _numpy_attention(q, k, v, mask):
    """float64 NumPy reference with the mask written out token by token (independent of `dense`)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, seq, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    docs = np.broadcast_to(np.asarray(mask.documents), (batch, seq))
    out = np.zeros_like(q)
    for b in range(batch):
        for t in range(seq):
            keys = [s for s in range(t + 1) if docs[b, s] == docs[b, t]
                    and (mask.sliding_window is None or t - s < mask.sliding_window)]
            for n in range(heads):
                logits = k[b, keys, n // groups] @ q[b, t, n] / np.sqrt(head_dim)
                p = np.exp(logits - logits.max())
                out[b, t, n] = (p / p.sum()) @ v[b, keys, n // groups]
    return out


def _grads(fn, q, k, v, weights):
    return jax.grad(lambda *qkv: jnp.sum(fn(*qkv).astype(jnp.float32) * weights), argnums=(0, 1, 2))(q, k, v)


def _compare(kernel, q, k, v, weights, mask, tolerance):
    """Outputs and gradients of `kernel(q, k, v, mask)` against `grouped_attention` on the dense mask."""
    dense = mask.dense(q.shape[1])
    reference = grouped_attention(q, k, v, dense)
    np.testing.assert_allclose(np.asarray(jax.jit(kernel)(q, k, v, mask), np.float32), np.asarray(reference, np.float32),
                               **tolerance)
    ours = jax.jit(lambda *a: _grads(lambda *qkv: kernel(*qkv, mask), *a))(q, k, v, weights)
    theirs = _grads(lambda *qkv: grouped_attention(*qkv, dense), q, k, v, weights)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tolerance)


def test_document_mask_dense_matches_token_by_token_rule():
    mask = DocumentMask(jnp.asarray([[0, 0, 0, 1, 1, 2, 2, 2]]), sliding_window=2)
    dense = np.asarray(mask.dense(8))[0, 0]
    docs = [0, 0, 0, 1, 1, 2, 2, 2]
    expected = [[j <= i and docs[i] == docs[j] and i - j < 2 for j in range(8)] for i in range(8)]
    np.testing.assert_array_equal(dense, np.array(expected))


@pytest.mark.slow
def test_blockwise_matches_numpy_with_documents_window_and_gqa():
    q, k, v, _, mask = _inputs(0, batch=2, seq=29, heads=6, kv_heads=2, head_dim=8, window=5)
    expected = _numpy_attention(q, k, v, mask)
    for block in (4, 8, 29, 64):  # several blocks (last one padded), one block, a block longer than the row
        np.testing.assert_allclose(np.asarray(blockwise_attention(q, k, v, mask, block_size=block)), expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 3, 11])
@pytest.mark.parametrize("block", [4, 16])
def test_blockwise_gradients_match_grouped(window, block):
    q, k, v, weights, mask = _inputs(1, batch=2, seq=37, heads=4, kv_heads=2, head_dim=8, window=window)
    _compare(lambda *a: blockwise_attention(*a, block_size=block), q, k, v, weights, mask, FP32_TOLERANCE)


@pytest.mark.slow
def test_blockwise_bf16_matches_grouped():
    q, k, v, weights, mask = _inputs(2, batch=2, seq=40, heads=4, kv_heads=1, head_dim=16, window=9, dtype=jnp.bfloat16)
    _compare(lambda *a: blockwise_attention(*a, block_size=8), q, k, v, weights, mask, BF16_TOLERANCE)


def test_blockwise_program_has_no_sequence_squared_buffer():
    """At T = 2048 with 256-token blocks, no forward or backward temporary has T x T elements per head."""
    q, k, v, weights, mask = _inputs(3, batch=1, seq=2048, heads=2, kv_heads=1, head_dim=8, window=None)

    def temp_bytes(kernel):
        loss = jax.jit(jax.grad(lambda *qkv: jnp.sum(kernel(*qkv) * weights), argnums=(0, 1, 2)))
        return loss.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    blockwise = temp_bytes(lambda *qkv: blockwise_attention(*qkv, mask, block_size=256))
    dense = temp_bytes(lambda *qkv: grouped_attention(*qkv, mask.dense(2048)))
    assert blockwise < 2 * 2048 * 2048 * 4 < dense  # below one head-pair's fp32 T x T logits; dense holds several


# The Pallas GPU kernel in interpret mode (any backend) and compiled (only where an NVIDIA GPU is the default
# backend, e.g. in `python -m rho_jax.bench gpu`).
FLASH_MODES = [pytest.param(True, id="interpret"),
               pytest.param(False, id="compiled", marks=pytest.mark.skipif(jax.default_backend() != "gpu",
                                                                           reason="the compiled kernel needs an NVIDIA GPU"))]


@pytest.mark.slow
@pytest.mark.parametrize("interpret", FLASH_MODES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flash_matches_grouped(dtype, interpret):
    q, k, v, weights, mask = _inputs(4, batch=2, seq=64, heads=4, kv_heads=2, head_dim=16, window=None, dtype=dtype)
    tolerance = FP32_TOLERANCE if dtype == jnp.float32 else BF16_TOLERANCE
    with jax.default_matmul_precision("highest"):  # fp32 dots in fp32 (the compiled kernel would use TF32)
        _compare(lambda *a: flash_attention(*a, interpret=interpret), q, k, v, weights, mask, tolerance)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "window"), [(jnp.float32, None), (jnp.float32, 40), (jnp.bfloat16, 40)])
def test_splash_interpret_matches_grouped(dtype, window):
    q, k, v, weights, mask = _inputs(5, batch=2, seq=128, heads=4, kv_heads=2, head_dim=16, window=window, dtype=dtype)
    tolerance = FP32_TOLERANCE if dtype == jnp.float32 else BF16_TOLERANCE
    _compare(lambda *a: splash_attention(*a, interpret=True), q, k, v, weights, mask, tolerance)


def test_kernels_reject_what_they_cannot_express():
    q, k, v, _, mask = _inputs(6, batch=1, seq=96, heads=2, kv_heads=1, head_dim=8, window=4)
    with pytest.raises(ValueError, match="no sliding window"):
        flash_attention(q, k, v, mask, interpret=True)
    with pytest.raises(ValueError, match="multiple of 128"):
        splash_attention(q, k, v, mask, interpret=True)
    with pytest.raises(ValueError, match="needs a DocumentMask"):
        attend(q, k, v, mask.dense(96), "blockwise")


@pytest.mark.parametrize(("backend", "seq", "window", "expected", "reason"), [
    ("tpu", 256, 8, "splash", None),
    ("tpu", 200, None, "blockwise", "multiple of 128"),
    ("gpu", 256, None, "flash", None),
    ("gpu", 256, 8, "blockwise", "no sliding window"),
    ("gpu", 100, None, "blockwise", "multiple of 32"),
    ("cpu", 256, None, "grouped", None),
    ("cpu", 2048, 8, "blockwise", None),
])
def test_auto_choice_per_backend(backend, seq, window, expected, reason):
    implementation, why = choose_implementation("auto", backend, seq, DocumentMask(None, window))
    assert implementation == expected
    assert (why is None) if reason is None else (reason in why)
    assert choose_implementation("grouped", backend, seq, DocumentMask(None, window)) == ("grouped", None)


def test_auto_on_mocked_accelerators_calls_the_fused_kernel_or_logs_the_fallback(monkeypatch, caplog):
    q, k, v, _, _ = _inputs(7, batch=1, seq=64, heads=2, kv_heads=1, head_dim=8, window=None)
    calls = []
    for name in ("flash_attention", "splash_attention"):
        monkeypatch.setattr(attention, name, lambda *a, name=name, **kw: calls.append((name, kw)) or a[0])
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    attend(q, k, v, DocumentMask(None, None), "auto")
    assert calls == [("flash_attention", {"interpret": False})]
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        out = attend(q, k, v, DocumentMask(None, 13), "auto")  # a window: flash cannot, blockwise does
    assert "using blockwise, because flash (Pallas GPU mha) has no sliding window (window 13)" in caplog.text
    np.testing.assert_array_equal(np.asarray(out), np.asarray(blockwise_attention(q, k, v, DocumentMask(None, 13))))
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    calls.clear()
    attend(q, k, v, DocumentMask(None, 13), "auto")  # 64 tokens: not a multiple of splash's 128-token blocks
    assert calls == [] and "splash needs a sequence length that is a multiple of 128, got 64" in caplog.text


def _model(implementation, window, dtype=jnp.float32):
    cfg = ModelConfig(model_type="mistral" if window else "llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, sliding_window=window)
    return Llama(cfg, ModelOptions(dtype=dtype, attention=implementation), rngs=nnx.Rngs(0))


@pytest.mark.slow
@pytest.mark.parametrize(("implementation", "window"), [("blockwise", 16), ("splash", 16), ("flash", None)])
def test_model_and_reference_losses_through_each_kernel_match_grouped(implementation, window):
    """The Llama forward (packed rows) and the SLM per-token losses/gradients, kernel vs grouped."""
    rng = np.random.default_rng(8)
    batch = {"input_ids": jnp.asarray(rng.integers(0, 64, size=(2, 128))),
             "targets": jnp.asarray(rng.integers(0, 64, size=(2, 128))),
             "segment_ids": _segments(rng, 2, 128)}

    def losses(impl):
        graphdef, params = nnx.split(_model(impl, window))

        def mean_loss(p):
            return slm.model_token_losses(graphdef, p, batch, chunk_size=None)[0].mean()

        return slm.model_token_losses(graphdef, params, batch, chunk_size=None)[0], jax.grad(mean_loss)(params)

    (ours, our_grads), (reference, reference_grads) = losses(implementation), losses("grouped")
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(our_grads), jax.tree.leaves(reference_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_pallas_kernel_runs_per_device_rows_under_a_batch_sharded_mesh():
    """Under `jax.set_mesh` with batch axes, splash runs in shard_map (one device's rows each) and
    still matches grouped attention."""
    from rho_jax.sharding import MeshConfig, make_mesh

    q, k, v, _, mask = _inputs(9, batch=4, seq=128, heads=2, kv_heads=1, head_dim=8, window=None)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2), jax.devices()[:4])
    with jax.set_mesh(mesh):
        out = jax.jit(lambda *qkv: attend(*qkv, "splash"))(q, k, v, mask)
        assert "shard_map" in str(jax.make_jaxpr(lambda *qkv: attend(*qkv, "splash"))(q, k, v, mask))
    np.testing.assert_allclose(np.asarray(out), np.asarray(grouped_attention(q, k, v, mask.dense(128))), **FP32_TOLERANCE)
