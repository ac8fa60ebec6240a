"""How well a quality classifier separates held-out documents: metrics, and the report files of `quality train`.

With y the true labels, p = `predicted_labels(score)`, threshold t (all counts from the confusion matrix):
    binary (high quality = label >= t):  precision = TP / (TP + FP), recall = TP / (TP + FN),
                                         F1 = 2 TP / (2 TP + FP + FN)   (0 when a denominator is 0)
    per label k:                         F1_k = 2 M[k,k] / (row_k + col_k) of the confusion matrix M
    macro-F1:                            mean of F1_k over the labels that occur in y or p
    confusion matrix M[i, j]:            documents with true label i predicted as j, over labels 0..max_label
These are scikit-learn's `precision_recall_fscore_support(average="binary")`, `f1_score(average="macro")`
and `confusion_matrix(labels=range(max_label + 1))`, computed here from the counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rho_jax.curation.classifier import LabelScale, QualityClassifier, predicted_labels

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SCORES_PNG = "scores.png"
HELDOUT_FILE = "heldout.jsonl"


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    """int64 `[n_labels, n_labels]`: M[i, j] = number of documents with label i predicted as j."""
    matrix = np.zeros((n_labels, n_labels), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def quality_metrics(labels: np.ndarray, scores: np.ndarray, scale: LabelScale, threshold: int) -> dict[str, Any]:
    """The metrics of the module docstring for true `labels` and classifier `scores` (same length)."""
    labels = np.asarray(labels, np.int64)
    predicted = predicted_labels(scores, scale)
    matrix = confusion_matrix(labels, predicted, scale.max_label + 1)
    high = np.arange(scale.max_label + 1) >= threshold
    tp = int(matrix[np.ix_(high, high)].sum())
    fp = int(matrix[np.ix_(~high, high)].sum())
    fn = int(matrix[np.ix_(high, ~high)].sum())
    support, predicted_count, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    per_label = {
        str(k): {"precision": _ratio(hits[k], predicted_count[k]), "recall": _ratio(hits[k], support[k]),
                 "f1": _ratio(2 * hits[k], support[k] + predicted_count[k]), "support": int(support[k])}
        for k in range(scale.max_label + 1)
    }
    present = [str(k) for k in range(scale.max_label + 1) if support[k] + predicted_count[k] > 0]
    return {
        "documents": len(labels),
        "threshold": threshold,
        "high_quality": int(support[high].sum()),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "macro_f1": float(np.mean([per_label[k]["f1"] for k in present])) if present else 0.0,
        "accuracy": _ratio(int(hits.sum()), len(labels)),
        "per_label": per_label,
        "confusion_matrix": matrix.tolist(),
    }


def _markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    n = len(m["confusion_matrix"])
    lines = [
        f"# Quality classifier: {report['kind']}",
        "",
        f"Embeddings: model fingerprint `{report['embedding']['model_fingerprint']}`, pooling "
        f"`{report['embedding']['pooling']}`, max_length {report['embedding']['max_length']}, "
        f"dtype {report['embedding']['dtype']}, dim {report['embedding']['dim']}.",
        f"Labels: {report['scale']} scale; high quality = label >= {m['threshold']} (score >= "
        f"{report['decision_score']}). Trained on {report['train_documents']} documents, evaluated on "
        f"{m['documents']} held-out documents ({m['high_quality']} high quality).",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {m[key]:.4f} |" for name, key in (("precision (high quality)", "precision"),
                                                           ("recall (high quality)", "recall"),
                                                           ("F1 (high quality)", "f1"), ("macro-F1", "macro_f1"),
                                                           ("accuracy", "accuracy"))),
        "",
        "Confusion matrix (rows: true label, columns: predicted label):",
        "",
        "| true \\ predicted | " + " | ".join(str(j) for j in range(n)) + " |",
        "|---" * (n + 1) + "|",
        *(f"| {i} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(m["confusion_matrix"])),
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *(f"| {k} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
          for k, v in m["per_label"].items()),
        "",
        f"![score distribution per label]({SCORES_PNG})",
        "",
    ]
    return "\n".join(lines)


def plot_scores(path: Path, labels: np.ndarray, scores: np.ndarray, scale: LabelScale, decision_score: float) -> None:
    """A PNG of the held-out score distribution of each true label, with the decision cut-off."""
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bins = np.linspace(0, scale.max_label, 41)
    for label in range(scale.max_label + 1):
        chosen = scores[labels == label]
        if len(chosen):
            axes.hist(chosen, bins=bins, histtype="step", linewidth=1.5, label=f"label {label} ({len(chosen)})")
    axes.axvline(decision_score, color="black", linestyle="--", linewidth=1, label=f"cut-off {decision_score}")
    axes.set_xlabel("classifier score")
    axes.set_ylabel("held-out documents")
    axes.set_title("Score distribution per true label")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def write_training_report(directory: str | Path, classifier: QualityClassifier, ids: list[str], labels: np.ndarray,
                          scores: np.ndarray, train_documents: int) -> dict[str, Any]:
    """Write report.json, report.md, scores.png and heldout.jsonl (id, label, score of each held-out
    document) into `directory`; returns the report."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    report = {
        "kind": classifier.kind,
        "scale": classifier.scale.name,
        "decision_score": classifier.decision_score,
        "embedding": classifier.spec.to_dict(),
        "train_documents": train_documents,
        "metrics": quality_metrics(labels, scores, classifier.scale, classifier.threshold),
    }
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
    (directory / REPORT_MD).write_text(_markdown(report))
    plot_scores(directory / SCORES_PNG, np.asarray(labels), np.asarray(scores), classifier.scale, classifier.decision_score)
    with open(directory / HELDOUT_FILE, "w") as f:
        for doc_id, label, score in zip(ids, labels, scores):
            f.write(json.dumps({"id": doc_id, "label": int(label), "score": float(score)}) + "\n")
    return report
