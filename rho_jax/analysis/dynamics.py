"""Token-loss dynamics (Rho-1 section 2.1): how each held-out token's loss moves during training.

Every valid target of a held-out set is scored by each checkpoint. A token is High at a checkpoint
when its loss exceeds `threshold` (default: the median token loss at the first checkpoint, so half
of the tokens start High), and is put in one of four categories by its state at the first and the
last checkpoint: H->H (stays hard), L->H (gets worse), H->L (is learned), L->L (was already easy).
The report gives each category's share and its mean loss at every checkpoint (PNG).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CATEGORIES = ("H->H", "L->H", "H->L", "L->L")


def classify(first: np.ndarray, last: np.ndarray, threshold: float) -> np.ndarray:
    """Index into `CATEGORIES` of every token, from its loss at the first and the last checkpoint
    (High: loss > threshold)."""
    high_first, high_last = np.asarray(first) > threshold, np.asarray(last) > threshold
    return np.where(high_first, np.where(high_last, 0, 2), np.where(high_last, 1, 3))


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """losses `[checkpoints, tokens]` of the same held-out tokens, at checkpoints `steps`."""

    steps: list[int]
    losses: np.ndarray
    threshold: float

    @classmethod
    def of(cls, steps: list[int], losses: np.ndarray, threshold: float | None = None) -> Dynamics:
        if len(steps) < 2:
            raise ValueError(f"token-loss dynamics need at least 2 checkpoints, got {len(steps)}.")
        losses = np.asarray(losses, np.float32)
        return cls(list(steps), losses, float(np.median(losses[0])) if threshold is None else float(threshold))

    @property
    def categories(self) -> np.ndarray:
        return classify(self.losses[0], self.losses[-1], self.threshold)

    def summary(self) -> dict[str, Any]:
        """Share, token count and mean loss at every checkpoint of each category."""
        categories = self.categories
        out = {"threshold": self.threshold, "steps": self.steps, "num_tokens": int(self.losses.shape[1]),
               "mean_loss": [float(x) for x in self.losses.mean(axis=1)], "categories": {}}
        for index, name in enumerate(CATEGORIES):
            members = categories == index
            out["categories"][name] = {
                "fraction": float(members.mean()),
                "count": int(members.sum()),
                "mean_loss": [float(x) for x in self.losses[:, members].mean(axis=1)] if members.any() else [],
            }
        return out


def plot(summary: dict[str, Any], path: Path) -> None:
    """Mean loss per category across checkpoints, with each category's share in the legend."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in zip(CATEGORIES, ("tab:red", "tab:orange", "tab:green", "tab:blue")):
        category = summary["categories"][name]
        if category["mean_loss"]:
            ax.plot(summary["steps"], category["mean_loss"], marker="o", color=color,
                    label=f"{name} ({category['fraction']:.0%})")
    ax.plot(summary["steps"], summary["mean_loss"], color="gray", linestyle="--", label="all tokens")
    ax.axhline(summary["threshold"], color="black", linewidth=0.8, linestyle=":",
               label=f"High/Low threshold {summary['threshold']:.2f}")
    ax.set(xlabel="training step (checkpoint)", ylabel="mean held-out token loss (nats)",
           title=f"Token-loss dynamics over {summary['num_tokens']:,} held-out tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"Token-loss dynamics: {summary['num_tokens']:,} held-out tokens, checkpoints at steps "
             f"{summary['steps']}, High = loss > {summary['threshold']:.3f} nats", "",
             "| category | share | tokens | mean loss, first -> last checkpoint |", "|---|---|---|---|"]
    for name in CATEGORIES:
        c = summary["categories"][name]
        change = f"{c['mean_loss'][0]:.3f} -> {c['mean_loss'][-1]:.3f}" if c["mean_loss"] else "-"
        lines.append(f"| {name} | {c['fraction']:.1%} | {c['count']:,} | {change} |")
    return "\n".join(lines) + "\n"


def write_report(dynamics: Dynamics, directory: Path) -> dict[str, Any]:
    """dynamics.json, dynamics.md and dynamics.png in `directory`; returns the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = dynamics.summary()
    (directory / "dynamics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (directory / "dynamics.md").write_text(markdown(summary))
    plot(summary, directory / "dynamics.png")
    return summary
