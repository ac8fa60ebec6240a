"""Per-token scores and the SLM selection of one batch, outside training (analysis, reports).

The same functions as the train step (`step.model_token_losses`, `slm.select_by_score`), so the
mask returned is the one a training step with this model, reference and batch would train on
(selection scope `global` over the batch given).
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from rho_jax import slm
from rho_jax.step import SLMConfig, model_token_losses


def build_token_scorer(model_graphdef: nnx.GraphDef, ref_graphdef: nnx.GraphDef, cfg: SLMConfig) -> Callable:
    """Jitted `(params, ref_params, batch) -> {"loss", "ref_loss", "score", "selected"}`, each `[B, T]`.

    loss / ref_loss: per-token cross-entropy of the model / reference (float32); score: the
    `cfg.score` value of each position (-inf where invalid; for `intersection`, the reference-loss
    score); selected: the positions SLM keeps, the top `ceil(cfg.ratio * valid)` of the batch.
    """
    needs_entropy = cfg.score in ("reference_entropy", "intersection")

    def scores(params: nnx.State, ref_params: nnx.State, batch: dict) -> dict[str, jax.Array]:
        loss, _ = model_token_losses(model_graphdef, params, batch, cfg.ce_chunk_size, False)
        ref_loss, ref_entropy = model_token_losses(ref_graphdef, ref_params, batch, cfg.ce_chunk_size, needs_entropy)
        valid = batch["valid"]
        kind = "reference_loss" if cfg.score == "intersection" else cfg.score
        score = slm.token_scores(kind, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy, valid=valid)
        selected = slm.select_by_score(cfg.score, cfg.ratio, valid, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy)
        return {"loss": loss, "ref_loss": ref_loss, "score": score, "selected": selected}

    return jax.jit(scores)
