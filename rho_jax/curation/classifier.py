"""Quality classifiers on document embeddings: training, scores, and a save format that is safe to load.

Labels are integers on a `LabelScale`: `edu` 0..5 (fineweb-edu's additive rubric) or `binary` 0/1 (phi-1's
"educational value: yes/no"). A document is high quality iff its label >= `threshold` (edu: 3, binary: 1).

Kinds (scikit-learn estimators on the raw embeddings); each gives a score on the label scale:
    random_forest  RandomForestClassifier over the labels (phi-1)       score = sum_k P(label k) * k
    logistic       LogisticRegression over the labels                  score = sum_k P(label k) * k
    ridge          Ridge regression of the label (fineweb-edu's head)  score = clip(prediction, 0, max_label)
A score's predicted label is clip(floor(score + 0.5), 0, max_label); a document is predicted high quality
iff its predicted label >= threshold, i.e. iff score >= threshold - 0.5 (`decision_score`, the filter's
default cut-off).

On disk, a directory: `classifier.skops`, the estimator in skops format (no pickle: loading rebuilds only
the types in `TRUSTED_TYPES` and refuses any other), and `classifier.json`: kind, scale, threshold, the
`EmbeddingSpec` of the embeddings it was trained on, and the sha256 of `classifier.skops`. `load` refuses a
file whose hash differs from the record (tampered) and, given the `EmbeddingSpec` of the caller's
embedder, a classifier trained on other embeddings (another model, tokenizer, pooling, length or dtype).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import skops.io
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split

from rho_jax.curation.embeddings import EmbeddingSpec

MODEL_FILE = "classifier.skops"
MANIFEST_FILE = "classifier.json"
FORMAT = "rho_jax.quality_classifier/1"
KINDS = ("random_forest", "logistic", "ridge")
# Types outside skops' default trusted set that these estimators need (a fitted tree of the forest).
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)


@dataclasses.dataclass(frozen=True)
class LabelScale:
    """Integer labels 0..max_label; `default_threshold` is the lowest high-quality label."""

    name: str
    max_label: int
    default_threshold: int

    def check(self, value: Any, where: str) -> int:
        """`value` as a label; a ValueError naming `where` unless it is an integer in 0..max_label."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= self.max_label:
            raise ValueError(f"{where}: label {value!r} is outside the {self.name} scale: labels must be integers "
                             f"0..{self.max_label}.")
        return value


SCALES = {"edu": LabelScale("edu", 5, 3), "binary": LabelScale("binary", 1, 1)}


def predicted_labels(scores: np.ndarray, scale: LabelScale) -> np.ndarray:
    """clip(floor(score + 0.5), 0, max_label) as int64: the label a score stands for."""
    return np.clip(np.floor(np.asarray(scores, np.float64) + 0.5), 0, scale.max_label).astype(np.int64)


def make_estimator(kind: str, seed: int = 0) -> Any:
    """An unfitted scikit-learn estimator of `kind` (see the module docstring)."""
    if kind == "random_forest":
        return RandomForestClassifier(n_estimators=200, random_state=seed)
    if kind == "logistic":
        return LogisticRegression(max_iter=2000)
    if kind == "ridge":
        return Ridge(alpha=1.0)
    raise ValueError(f"classifier kind must be one of {KINDS}, got {kind!r}.")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class QualityClassifier:
    """A fitted estimator of `kind` on embeddings described by `spec`, for labels on `scale`."""

    estimator: Any
    kind: str
    scale: LabelScale
    threshold: int
    spec: EmbeddingSpec

    @property
    def decision_score(self) -> float:
        """The lowest score predicted high quality: threshold - 0.5."""
        return self.threshold - 0.5

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """float64 `[n]` scores on the label scale of float32 embeddings `[n, spec.dim]`."""
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.spec.dim:
            raise ValueError(f"embeddings must have shape [n, {self.spec.dim}] (the classifier's embedding size), "
                             f"got {embeddings.shape}.")
        if len(embeddings) == 0:
            return np.zeros(0)
        if self.kind == "ridge":
            return np.clip(self.estimator.predict(embeddings).astype(np.float64), 0, self.scale.max_label)
        return self.estimator.predict_proba(embeddings) @ self.estimator.classes_.astype(np.float64)

    def check_spec(self, spec: EmbeddingSpec, model: str) -> None:
        """Raise ValueError unless `spec` (of the embedder of `model`) is the one this classifier was trained on."""
        if spec != self.spec:
            differ = {k: (v, getattr(spec, k)) for k, v in self.spec.to_dict().items() if getattr(spec, k) != v}
            raise ValueError(
                "this quality classifier was trained on other embeddings than those of " + model + ": "
                + "; ".join(f"{k}: classifier {a!r}, model {b!r}" for k, (a, b) in differ.items())
                + ". Embed with the classifier's model and settings, or train a classifier on this model's embeddings."
            )

    def save(self, directory: str | Path) -> None:
        """Write `classifier.skops` and `classifier.json` into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        skops.io.dump(self.estimator, directory / MODEL_FILE)
        manifest = {"format": FORMAT, "kind": self.kind, "scale": dataclasses.asdict(self.scale),
                    "threshold": self.threshold, "embedding": self.spec.to_dict(),
                    "sha256": _sha256(directory / MODEL_FILE)}
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path, spec: EmbeddingSpec | None = None, model: str = "the given model") -> QualityClassifier:
        """The classifier saved in `directory`; with `spec`, refused (ValueError) unless trained on those
        embeddings. Refused as well when `classifier.skops` does not match its recorded sha256 or holds a
        type outside skops' trusted defaults and `TRUSTED_TYPES`."""
        directory = Path(directory)
        manifest_path, model_path = directory / MANIFEST_FILE, directory / MODEL_FILE
        if not manifest_path.is_file() or not model_path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved quality classifier: it needs {MANIFEST_FILE} and "
                                    f"{MODEL_FILE} (written by `quality train`).")
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: not a {FORMAT} manifest.")
        if _sha256(model_path) != manifest.get("sha256"):
            raise ValueError(f"{model_path} does not match the sha256 recorded in {manifest_path}: the file was changed "
                             "after training; refusing to load it.")
        untrusted = sorted(set(skops.io.get_untrusted_types(file=model_path)) - set(TRUSTED_TYPES))
        if untrusted:
            raise ValueError(f"{model_path} holds types that are not trusted: {untrusted}; refusing to load it.")
        kind = manifest.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{manifest_path}: kind must be one of {KINDS}, got {kind!r}.")
        estimator = skops.io.load(model_path, trusted=list(TRUSTED_TYPES))
        if type(estimator) is not type(make_estimator(kind)):
            raise ValueError(f"{model_path} holds a {type(estimator).__name__}, not the {kind} its manifest names.")
        classifier = cls(estimator, kind, LabelScale(**manifest["scale"]), int(manifest["threshold"]),
                         EmbeddingSpec.from_dict(manifest.get("embedding"), str(manifest_path)))
        if spec is not None:
            classifier.check_spec(spec, model)
        return classifier


@dataclasses.dataclass
class HeldOutSplit:
    """Row indices of the training and held-out documents."""

    train: np.ndarray
    test: np.ndarray


def split_rows(labels: np.ndarray, threshold: int, test_fraction: float, seed: int) -> HeldOutSplit:
    """A held-out split of `test_fraction` of the rows, stratified by high quality (label >= threshold);
    a ValueError unless both sides of the threshold have >= 2 documents."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
    high = labels >= threshold
    if high.sum() < 2 or (~high).sum() < 2:
        raise ValueError(f"a held-out split needs >= 2 labelled documents on each side of the threshold {threshold}; "
                         f"got {int(high.sum())} at or above it and {int((~high).sum())} below.")
    rows = np.arange(len(labels))
    test_size = max(2, round(test_fraction * len(labels)))
    if len(labels) - test_size < 2:
        raise ValueError(f"{len(labels)} labelled documents leave too few for training after holding out {test_size}.")
    train, test = train_test_split(rows, test_size=test_size, random_state=seed, stratify=high)
    return HeldOutSplit(np.sort(train), np.sort(test))


def train_classifier(embeddings: np.ndarray, labels: np.ndarray, spec: EmbeddingSpec, *, kind: str = "random_forest",
                     scale: LabelScale = SCALES["edu"], threshold: int | None = None, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[QualityClassifier, HeldOutSplit]:
    """A classifier of `kind` fitted on the training rows of (`embeddings`, `labels`), and the split whose
    `test` rows it never saw (the report's held-out set)."""
    threshold = scale.default_threshold if threshold is None else threshold
    if not 1 <= threshold <= scale.max_label:
        raise ValueError(f"threshold must be a label in 1..{scale.max_label} of the {scale.name} scale, got {threshold!r}.")
    labels = np.asarray(labels, np.int64)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels.")
    split = split_rows(labels, threshold, test_fraction, seed)
    estimator = make_estimator(kind, seed)
    estimator.fit(np.asarray(embeddings, np.float32)[split.train], labels[split.train])
    return QualityClassifier(estimator, kind, scale, threshold, spec), split
