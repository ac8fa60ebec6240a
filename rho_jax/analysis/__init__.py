"""Looking at what SLM selects and why (`python -m rho_jax.analyze`).

dynamics.py       per-token loss across checkpoints: H->H / L->H / H->L / L->L (Rho-1 section 2.1)
selection_page.py an HTML page of a text's tokens colored by score, selected tokens marked
loss_curves.py    selected vs unselected token loss from a run's metrics.jsonl (Rho-1 Fig. 6)
models.py         checkpoints and HF directories as models, per-token losses on held-out rows
token_scores.py   the train step's scores and selection of one batch, outside training
token_html.py     a self-contained HTML page of tokens colored by score (shared with the quickstart)
"""
