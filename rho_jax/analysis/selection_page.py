"""An HTML page showing which tokens of a text SLM would train on, and why.

The text (a .txt file, or jsonl/parquet with a text field) is tokenized and packed into rows of
`seq_len + 1` tokens exactly like training data; the trained model (a checkpoint or HF directory)
and the reference score every target, and the selection is the train step's over all those rows
together (`rho_jax.analysis.token_scores`). Tokens are colored by their score (for `excess`: model loss
minus reference loss), selected ones are bold and underlined, hovering shows the losses.
"""

from __future__ import annotations

import html
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import transformers

from rho_jax.analysis.models import load
from rho_jax.analysis.token_html import TokenView, document_pieces, piece_views, render_token_html
from rho_jax.analysis.token_scores import build_token_scorer
from rho_jax.batch import batch_from_tokens
from rho_jax.data import SourceConfig, load_tokenizer
from rho_jax.data.packing import source_rows
from rho_jax.data.sources import open_source
from rho_jax.sharding import make_mesh
from rho_jax.slm import SLMConfig


def text_batch(path: str | Path, tokenizer: transformers.PreTrainedTokenizerBase, seq_len: int, max_rows: int
               ) -> dict[str, np.ndarray]:
    """The first `max_rows` packed rows of the documents in `path`, as one model batch."""
    rows = list(itertools.islice(source_rows(open_source(SourceConfig(paths=(str(path),))), tokenizer, seq_len + 1),
                                 max_rows))
    if not rows:
        raise ValueError(f"{path} holds no text to score.")
    return batch_from_tokens(*(np.stack([r[key] for r in rows]) for key in ("tokens", "segment_ids", "loss_mask")))


def document_views(batch: dict[str, np.ndarray], scores: dict[str, np.ndarray],
                   tokenizer: transformers.PreTrainedTokenizerBase) -> list[tuple[str, list[TokenView]]]:
    """(caption, tokens) of every document piece in the batch: its first input token, then every
    target with its score, selection and losses."""
    documents = []
    for row, segment, positions in document_pieces(batch["segment_ids"]):
        def view(text: str, t: int, row: int = row) -> TokenView:
            if not batch["valid"][row, t]:
                return TokenView(text, float("nan"), False, tooltip="not a target")
            tooltip = (f"score {scores['score'][row, t]:+.3f} | loss {scores['loss'][row, t]:.3f} | "
                       f"reference {scores['ref_loss'][row, t]:.3f}")
            return TokenView(text, float(scores["score"][row, t]), bool(scores["selected"][row, t]), tooltip=tooltip)

        documents.append((f"row {row}, document piece {segment}", piece_views(batch, tokenizer.decode, row, positions, view)))
    return documents


def write_page(model: str | Path, reference: str | Path, text: str | Path, output: str | Path, *, tokenizer: str,
               slm: SLMConfig, seq_len: int, max_rows: int) -> dict[str, Any]:
    """Score `text` with `model` and `reference`, write the page to `output`; returns a summary."""
    hf_tokenizer = load_tokenizer(tokenizer)
    batch = text_batch(text, hf_tokenizer, seq_len, max_rows)
    mesh = make_mesh()
    graphdef, params = load(model, mesh)
    ref_graphdef, ref_params = load(reference, mesh)
    scorer = build_token_scorer(graphdef, ref_graphdef, slm, mesh)
    scores = {k: np.asarray(v) for k, v in scorer(params, ref_params, batch).items()}
    valid = batch["valid"]
    finite = np.isfinite(scores["score"][valid])
    scale = float(np.quantile(np.abs(scores["score"][valid][finite]), 0.95)) if finite.any() else 1.0
    summary = {"tokens": int(valid.sum()), "selected": int(scores["selected"].sum()),
               "mean_loss_selected": float(scores["loss"][scores["selected"]].mean()),
               "mean_loss_unselected": float(scores["loss"][valid & ~scores["selected"]].mean())
               if (valid & ~scores["selected"]).any() else float("nan")}
    model_, reference_, text_ = (html.escape(str(x)) for x in (model, reference, text))
    intro = (f"<p>Model <code>{model_}</code>, reference <code>{reference_}</code>, text <code>{text_}</code>. "
             f"Score <b>{slm.score}</b>, ratio {slm.ratio}: {summary['selected']:,} of {summary['tokens']:,} target "
             f"tokens selected over the whole page, as one training batch would.</p>")
    render_token_html(f"SLM token selection: {Path(text).name}", intro, document_views(batch, scores, hf_tokenizer),
                      max(scale, 1e-3), output)
    return summary
