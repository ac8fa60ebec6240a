"""Per-token scores and the SLM selection of one batch, outside training (analysis, reports).

The same functions as the train step (`slm.model_token_losses` through `slm.token_losses_on_mesh`,
`slm.select_by_score`), so the mask returned is the one a training step with this model, reference
and batch would train on (selection scope `global` over the batch given).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import Mesh

from rho_jax import slm


def build_token_scorer(model_graphdef: nnx.GraphDef, ref_graphdef: nnx.GraphDef, cfg: slm.SLMConfig,
                       mesh: Mesh) -> Callable:
    """`(params, ref_params, batch) -> {"loss", "ref_loss", "score", "selected"}`, each `[B, T]`.

    loss / ref_loss: per-token cross-entropy of the model / reference (float32); score: the
    `cfg.score` value of each position (-inf where invalid; for `intersection`, the reference-loss
    score); selected: the positions SLM keeps, the top `ceil(cfg.ratio * valid)` of the batch.
    """
    model_losses = slm.token_losses_on_mesh(model_graphdef, mesh, chunk_size=cfg.ce_chunk_size)
    ref_losses = slm.token_losses_on_mesh(ref_graphdef, mesh, chunk_size=cfg.ce_chunk_size,
                                          with_entropy=cfg.needs_entropy)

    @jax.jit
    def select(loss, ref_loss, ref_entropy, valid) -> dict[str, jax.Array]:
        kind = "reference_loss" if cfg.score == "intersection" else cfg.score
        score = slm.token_scores(kind, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy, valid=valid)
        selected = slm.select_by_score(cfg.score, cfg.ratio, valid, loss=loss, ref_loss=ref_loss, ref_entropy=ref_entropy)
        return {"loss": loss, "ref_loss": ref_loss, "score": score, "selected": selected}

    def scores(params: nnx.State, ref_params: nnx.State, batch: dict) -> dict[str, jax.Array]:
        loss, _ = model_losses(params, batch)
        ref_loss, ref_entropy = ref_losses(ref_params, batch)
        return select(loss, ref_loss, ref_entropy, batch["valid"])

    return scores
