"""Packed rows: documents sharing a row with segment ids behave exactly as if each ran alone."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rho_jax.models import load_hf
from rho_jax.models.llama import attention_mask, positions_from_segments
from rho_jax.models.parity import PARITY_TOLERANCE, hf_reference_logits, random_token_ids


def test_positions_restart_at_each_segment():
    segments = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0], [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5], [0, 1, 1, 1, 0, 0, 2, 2, 1, 1, 1]])
    expected = np.array([[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1], np.arange(11), [0, 0, 1, 2, 0, 1, 0, 1, 0, 1, 2]])
    np.testing.assert_array_equal(np.asarray(positions_from_segments(jnp.asarray(segments))), expected)


def test_attention_mask_combines_causal_segment_and_window():
    segments = jnp.asarray([[1, 1, 1, 1, 2, 2, 2]])
    mask = np.asarray(attention_mask(7, segments, sliding_window=2))[0, 0]
    expected = np.zeros((7, 7), bool)
    for i in range(7):
        for j in range(7):
            same = (i < 4) == (j < 4)
            expected[i, j] = j <= i and i - j < 2 and same
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-sliding-window"])
def test_packed_documents_equal_documents_alone(tiny_hf_dir, variant):
    hf_dir = tiny_hf_dir(variant)
    model = load_hf(hf_dir)
    lengths = (9, 13, 6)
    docs = [random_token_ids(320, 1, n, seed=10 + i) for i, n in enumerate(lengths)]
    row = np.concatenate(docs, axis=1)
    segments = np.concatenate([np.full((1, n), i + 1) for i, n in enumerate(lengths)], axis=1)
    packed = np.asarray(model(row, segment_ids=segments))
    start = 0
    for doc in docs:
        alone_rho = np.asarray(model(doc))
        alone_hf = hf_reference_logits(hf_dir, doc)  # independent reference for the same document
        np.testing.assert_allclose(packed[:, start : start + doc.shape[1]], alone_rho, atol=PARITY_TOLERANCE, rtol=0)
        np.testing.assert_allclose(packed[:, start : start + doc.shape[1]], alone_hf, atol=PARITY_TOLERANCE, rtol=0)
        start += doc.shape[1]


def test_documents_are_runs_of_an_id_not_the_id_itself(tiny_hf_dir):
    """A segment id that reappears later in the row (e.g. padding 0 at both ends) starts a new document."""
    model = load_hf(tiny_hf_dir("llama-gqa"))
    docs = [random_token_ids(320, 1, n, seed=40 + i) for i, n in enumerate((4, 5, 6))]
    row = np.concatenate(docs, axis=1)
    segments = np.array([[1] * 4 + [2] * 5 + [1] * 6])
    packed = np.asarray(model(row, segment_ids=segments))
    np.testing.assert_allclose(packed[:, 9:], np.asarray(model(docs[2])), atol=PARITY_TOLERANCE, rtol=0)


def test_explicit_positions_override_segment_positions(tiny_hf_dir):
    model = load_hf(tiny_hf_dir("llama-gqa"))
    row = random_token_ids(320, 1, 12, seed=20)
    segments = np.array([[1] * 5 + [2] * 7])
    derived = np.asarray(model(row, segment_ids=segments))
    explicit = np.asarray(model(row, segment_ids=segments, positions=positions_from_segments(jnp.asarray(segments))))
    np.testing.assert_array_equal(derived, explicit)
    # Rotary attention depends on relative positions only: a shift changes nothing, a stretch does.
    shifted = np.asarray(model(row, segment_ids=segments, positions=np.arange(12)[None] + 3))
    np.testing.assert_allclose(shifted, derived, atol=1e-4, rtol=0)
    stretched = np.asarray(model(row, segment_ids=segments, positions=2 * np.arange(12)[None]))
    assert np.abs(stretched - derived).max() > 1e-2
