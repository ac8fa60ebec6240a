"""The CPU quickstart: reproduce the Rho-1 effect in minutes with the real curation and training CLIs.

    python -m rho_jax.quickstart [--output runs/quickstart] [--seeds 0 1 2]

Builds a mixed pool of documents, a noisy web-style corpus with labelled noise and a held-out set
(`corpus`); trains a small embedding model on the pool and curates the
reference data from it with a quality classifier, a quality filter and decontamination against the
held-out set (`reference_data`, through `python -m rho_jax.curate`); trains a reference model on the
curated data, then CLM and SLM from the same initialization on the noisy corpus for each seed
(`pipeline`), and writes a report: held-out loss table and plot, selection rates of noise vs clean
tokens, the curation's figures, and a token-selection HTML page (`report`, `selection`).
"""
