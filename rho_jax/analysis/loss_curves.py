"""Selected vs unselected token loss during SLM training (Rho-1 Fig. 6), from runs' metrics.jsonl.

Per step the trainer logs the mean loss of the tokens it selected (`loss_selected`), of the valid
tokens it did not (`loss_unselected`) and of all of them (`loss_all`). Curves are smoothed with an
exponential moving average (`smoothing` in [0, 1), 0 = raw) and plotted against training tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rho_jax.training.run_dir import METRICS_FILE, read_jsonl  # noqa: E402

CURVES = (("loss_selected", "selected tokens", "-"), ("loss_unselected", "unselected tokens", "--"),
          ("loss_all", "all tokens", ":"))


def ema(values: list[float], smoothing: float) -> np.ndarray:
    """Exponential moving average, bias-corrected so the first point is the first value."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = smoothing * average + (1 - smoothing) * value
        weight = smoothing * weight + (1 - smoothing)
        out.append(average / weight)
    return np.asarray(out)


def read_curves(run: str | Path) -> dict[str, list[float]]:
    """tokens and the three losses of every logged step of `run`."""
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no {METRICS_FILE}: is it a rho_jax training run?")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{path} holds no steps yet.")
    return {key: [r[key] for r in records] for key in ("tokens", *(name for name, _, _ in CURVES))}


def plot(runs: list[str | Path], path: str | Path, smoothing: float = 0.9) -> dict[str, Any]:
    """One PNG with every run's curves; returns {run name: final smoothed losses}."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    finals = {}
    for run, color in zip(runs, colors * (len(runs) // len(colors) + 1)):
        curves, name = read_curves(run), Path(run).name
        tokens = np.asarray(curves["tokens"], float)
        finals[name] = {}
        for key, label, style in CURVES:
            smoothed = ema(curves[key], smoothing)
            ax.plot(tokens, smoothed, color=color, linestyle=style, label=f"{name}: {label}")
            finals[name][key] = float(smoothed[-1])
    ax.set(xlabel="training tokens", ylabel=f"token loss (nats, EMA {smoothing:g})",
           title="Loss of the tokens SLM selects vs those it skips")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return finals
