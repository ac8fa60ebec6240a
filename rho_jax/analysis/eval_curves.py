"""Held-out loss and few-shot accuracy vs training tokens for several runs (Rho-1 Fig. 1), from eval.jsonl.

The trainer appends one record per evaluated held-out set (`{"tokens", "set", "loss"}`) and per
few-shot task (`{"tokens", "task", "accuracy"}`, accuracy in percent) at every evaluation. Each
set and each task gets a panel; each run is one line in every panel it has data for.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rho_jax.training.run_dir import EVAL_FILE, read_jsonl  # noqa: E402

# A panel: (kind, name), kind "set" (held-out loss) or "task" (accuracy).
Panel = tuple[str, str]


def read_eval(run: str | Path) -> dict[Panel, list[tuple[int, float]]]:
    """(tokens, value) of every evaluation of `run`, per panel, in training order."""
    path = Path(run) / EVAL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no {EVAL_FILE}: the run evaluated nothing (see `eval:` in its config).")
    series: dict[Panel, list[tuple[int, float]]] = defaultdict(list)
    for record in read_jsonl(path):
        if "task" in record:
            series[("task", record["task"])].append((record["tokens"], record["accuracy"]))
        elif "set" in record:
            series[("set", record["set"])].append((record["tokens"], record["loss"]))
    if not series:
        raise ValueError(f"{path} holds no evaluations yet.")
    return series


def plot(runs: list[str | Path], path: str | Path) -> dict[str, dict[str, float]]:
    """One PNG, a panel per held-out set and per task; returns {run name: {panel label: last value}}."""
    data = {Path(run).name: read_eval(run) for run in runs}
    panels = sorted({panel for series in data.values() for panel in series}, key=lambda p: (p[0] != "task", p[1]))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    finals: dict[str, dict[str, Any]] = {name: {} for name in data}
    for ax, (kind, name) in zip(axes.flat, panels):
        label = f"{name} accuracy (%)" if kind == "task" else f"{name} held-out loss (nats)"
        for run_name, series in data.items():
            points = series.get((kind, name))
            if points:
                ax.plot([t for t, _ in points], [v for _, v in points], marker="o", markersize=3, label=run_name)
                finals[run_name][label] = points[-1][1]
        ax.set(xlabel="training tokens", title=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return finals
