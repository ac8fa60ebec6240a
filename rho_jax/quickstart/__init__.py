"""The CPU quickstart: reproduce the Rho-1 effect in minutes with the real training CLI.

    python -m rho_jax.quickstart [--output runs/quickstart] [--seeds 0 1 2]

Builds a high-quality math corpus, a noisy web-style corpus with labelled noise and a held-out set
(`corpus`), trains a reference model on the high-quality data, then CLM and SLM from the same
initialization on the noisy corpus for each seed (`pipeline`), and writes a report: held-out
loss table and plot, selection rates of noise vs clean tokens, and a token-selection HTML page
(`report`, `selection`).
"""
