"""Replay an SLM run's token selection on the labelled probe, at its initialization and every checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import transformers
from jax.sharding import Mesh

from rho_jax.analysis.token_html import TokenView, document_pieces, piece_views
from rho_jax.analysis.token_scores import build_token_scorer
from rho_jax.quickstart.probe import LABELS, selection_counts
from rho_jax.sharding import param_shardings
from rho_jax.training.checkpoint import CHECKPOINTS_DIR, checkpoint_steps, load_checkpoint_params
from rho_jax.training.config import RunConfig
from rho_jax.training.model_sources import load_params, model_graph, read_model_config


class RunModels:
    """The trained model (at any saved step) and the reference of one finished SLM run."""

    def __init__(self, cfg: RunConfig, run_dir: Path, mesh: Mesh):
        self.cfg, self.run_dir, self.mesh = cfg, run_dir, mesh
        self.model_config = read_model_config(cfg.model)
        self.graphdef, self.abstract = model_graph(self.model_config, cfg.model)
        ref_config = read_model_config(cfg.reference, "reference")
        ref_graphdef, ref_abstract = model_graph(ref_config, cfg.reference)
        self.ref_params = load_params(cfg.reference, ref_config, ref_abstract, mesh, cfg.train.seed)
        self.scorer = build_token_scorer(self.graphdef, ref_graphdef, cfg.slm, mesh)

    def saved_steps(self) -> list[int]:
        return checkpoint_steps(self.run_dir)

    def params(self, step: int):
        """Parameters at `step`: 0 is the initialization (re-created from the run's seed), others a checkpoint."""
        if step == 0:
            return load_params(self.cfg.model, self.model_config, self.abstract, self.mesh, self.cfg.train.seed)
        directory = self.run_dir / CHECKPOINTS_DIR / str(step)
        return load_checkpoint_params(directory, self.abstract, param_shardings(self.abstract, self.mesh))


def selection_by_step(models: RunModels, probe: list[dict[str, np.ndarray]]) -> dict[int, dict[str, dict[str, int]]]:
    """{step: selection counts per label} for step 0 and every saved checkpoint."""
    return {step: selection_counts(models.scorer, models.params(step), models.ref_params, probe)
            for step in [0, *models.saved_steps()]}


def _scored_documents(models: RunModels, params, batch: dict[str, np.ndarray],
                      tokenizer: transformers.PreTrainedTokenizerBase, min_tokens: int) -> list[tuple[str, list[TokenView]]]:
    """(kind, tokens) of every document piece of `batch` with at least `min_tokens` targets."""
    model_batch = {key: value for key, value in batch.items() if key != "labels"}
    out = {key: np.asarray(value) for key, value in models.scorer(params, models.ref_params, model_batch).items()}
    candidates = []
    for row, _, piece in document_pieces(batch["segment_ids"]):
        positions = piece[batch["valid"][row, piece]]
        if len(positions) < min_tokens:
            continue

        def view(text: str, t: int, row: int = row) -> TokenView:
            label = LABELS[int(batch["labels"][row, t])]
            tooltip = (f"{label} | score {out['score'][row, t]:+.2f} = loss {out['loss'][row, t]:.2f} "
                       f"- ref {out['ref_loss'][row, t]:.2f}")
            return TokenView(text, float(out["score"][row, t]), bool(out["selected"][row, t]), marked=label != "clean",
                             tooltip=tooltip)

        labels = set(batch["labels"][row, positions].tolist())
        kind = "offdomain" if labels == {LABELS.index("offdomain")} else "web" if len(labels) > 1 else "clean"
        candidates.append((kind, piece_views(batch, tokenizer.decode, row, positions, view)))
    return candidates


def documents_for_display(
    models: RunModels, step: int, batches: list[dict[str, np.ndarray]], tokenizer: transformers.PreTrainedTokenizerBase,
    max_documents: int, min_tokens: int = 40,
) -> list[tuple[str, list[TokenView]]]:
    """Whole documents of the probe `batches` as scored tokens (each batch selected on its own), for
    `render_token_html`: up to `max_documents - 1` in-domain documents with web noise, then one
    off-domain document. The first token of a document is shown without a score (it is no target).
    """
    params = models.params(step)
    candidates = [c for batch in batches for c in _scored_documents(models, params, batch, tokenizer, min_tokens)]
    mixed = [tokens for kind, tokens in candidates if kind == "web"][: max_documents - 1]
    offdomain = [tokens for kind, tokens in candidates if kind == "offdomain"][:1]
    captions = [f"In-domain document with injected web noise ({i + 1})" for i in range(len(mixed))]
    return list(zip(captions + ["Off-domain document"], mixed + offdomain))
