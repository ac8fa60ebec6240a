"""Quality classifier (rho_jax.curation): embeddings, classifier metrics and safe files, annotation, filter pipeline."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from datatrove.executor import LocalPipelineExecutor
from flax import nnx
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from slurm_stand_in import slurm_stand_in

from rho_jax.analysis.models import model_source
from rho_jax.bench.embedding_bench import main as bench_main
from rho_jax.bench.embedding_bench import make_documents
from rho_jax.curation.annotate import (
    OK,
    OUT_OF_RANGE,
    RUBRICS,
    UNPARSEABLE,
    annotate_documents,
    parse_score,
    parse_yes_no,
    read_labels,
    sample_documents,
)
from rho_jax.curation.classifier import SCALES, QualityClassifier, predicted_labels, train_classifier
from rho_jax.curation.corpus import corpus_reader
from rho_jax.curation.embeddings import EmbeddingSpec, cached_embedder, embed_texts, load_embedder, read_embedded_shards
from rho_jax.curation.quality_cli import main as quality_main
from rho_jax.curation.quality_filter import SCORE_KEY, filter_pipeline
from rho_jax.curation.quality_report import HELDOUT_FILE, REPORT_JSON, SCORES_PNG, quality_metrics, write_training_report
from rho_jax.data.tokenizer import load_tokenizer
from rho_jax.sharding import MeshConfig, make_mesh
from rho_jax.training.model_sources import load_model

SPEC = EmbeddingSpec(model_fingerprint="0123456789abcdef", pooling="mean", max_length=64, dtype="float32", dim=8)
WORDS = "the cat sat on a mat while two dogs ran past and 48 clips were sold in April then May".split()


def _texts(count: int, seed: int = 0, max_words: int = 120) -> list[str]:
    """Made-up documents of 1..max_words words (several length buckets of the tiny model)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, max_words))) for _ in range(count)]


def _gaussian_data(labels: np.ndarray, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Embeddings whose mean moves with the label, plus noise (a learnable but imperfect task)."""
    rng = np.random.default_rng(seed)
    return (labels[:, None] * 0.6 + rng.normal(size=(len(labels), dim))).astype(np.float32)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _read_shards(folder: Path) -> list[dict]:
    rows = []
    for shard in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(shard, "rt") as f:
            rows += [json.loads(line) for line in f]
    return rows


# ---------------------------------------------------------------- metrics and the report


@pytest.mark.parametrize("scale_name, threshold", [("edu", 3), ("edu", 1), ("binary", 1)])
@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_sklearn(scale_name, threshold, seed):
    scale = SCALES[scale_name]
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.integers(0, scale.max_label + 1, n)
    scores = np.clip(labels + rng.normal(scale=1.2, size=n), 0, scale.max_label)
    if seed == 0:  # a label that nobody predicts and one that never occurs
        scores = np.where(labels == scale.max_label, 0.0, scores)
    metrics = quality_metrics(labels, scores, scale, threshold)
    predicted = predicted_labels(scores, scale)
    precision, recall, f1, _ = precision_recall_fscore_support(labels >= threshold, predicted >= threshold,
                                                               average="binary", zero_division=0)
    assert metrics["precision"] == pytest.approx(precision)
    assert metrics["recall"] == pytest.approx(recall)
    assert metrics["f1"] == pytest.approx(f1)
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0))
    assert metrics["confusion_matrix"] == confusion_matrix(labels, predicted, labels=range(scale.max_label + 1)).tolist()


def test_predicted_label_rounds_half_up_and_clips():
    scores = np.array([-0.3, 0.49, 0.5, 2.5, 3.49, 5.7])
    assert predicted_labels(scores, SCALES["edu"]).tolist() == [0, 0, 1, 3, 3, 5]


@pytest.mark.parametrize("kind", ["random_forest", "logistic", "ridge"])
def test_training_report_equals_sklearn_on_heldout(tmp_path, kind):
    labels = np.random.default_rng(1).integers(0, 6, 150)
    embeddings = _gaussian_data(labels)
    classifier, split = train_classifier(embeddings, labels, SPEC, kind=kind, test_fraction=0.3, seed=0)
    assert not set(split.train) & set(split.test) and len(split.test) == 45
    scores = classifier.score(embeddings[split.test])
    write_training_report(tmp_path, classifier, [f"d{i}" for i in split.test], labels[split.test], scores, len(split.train))
    report = json.loads((tmp_path / REPORT_JSON).read_text())["metrics"]
    heldout = [json.loads(line) for line in (tmp_path / HELDOUT_FILE).read_text().splitlines()]
    y = np.array([row["label"] for row in heldout])
    predicted = predicted_labels(np.array([row["score"] for row in heldout]), SCALES["edu"])
    precision, recall, f1, _ = precision_recall_fscore_support(y >= 3, predicted >= 3, average="binary", zero_division=0)
    assert (report["precision"], report["recall"], report["f1"]) == pytest.approx((precision, recall, f1))
    assert report["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0))
    assert report["confusion_matrix"] == confusion_matrix(y, predicted, labels=range(6)).tolist()
    assert report["f1"] > 0.7  # the task is learnable: the numbers above are not all zeros
    assert (tmp_path / SCORES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| macro-F1 |" in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------- safe save / load


@pytest.mark.parametrize("kind", ["random_forest", "logistic", "ridge"])
def test_save_load_round_trip_gives_identical_scores(tmp_path, kind):
    labels = np.random.default_rng(2).integers(0, 2, 80)
    embeddings = _gaussian_data(labels)
    classifier, _ = train_classifier(embeddings, labels, SPEC, kind=kind, scale=SCALES["binary"])
    classifier.save(tmp_path)
    loaded = QualityClassifier.load(tmp_path, SPEC)
    assert (loaded.kind, loaded.scale, loaded.threshold, loaded.spec) == (kind, SCALES["binary"], 1, SPEC)
    np.testing.assert_array_equal(loaded.score(embeddings), classifier.score(embeddings))


def _saved_classifier(directory: Path) -> QualityClassifier:
    labels = np.arange(40) % 6
    classifier, _ = train_classifier(_gaussian_data(labels), labels, SPEC, kind="random_forest")
    classifier.save(directory)
    return classifier


def test_tampered_classifier_file_is_refused(tmp_path):
    _saved_classifier(tmp_path)
    data = bytearray((tmp_path / "classifier.skops").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "classifier.skops").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        QualityClassifier.load(tmp_path)


class NotAnEstimator:
    """A type skops does not trust: loading it could run arbitrary code."""


def test_classifier_with_untrusted_types_is_refused_even_with_a_matching_hash(tmp_path):
    import hashlib

    import skops.io

    _saved_classifier(tmp_path)
    skops.io.dump({"payload": NotAnEstimator()}, tmp_path / "classifier.skops")
    manifest = json.loads((tmp_path / "classifier.json").read_text())
    manifest["sha256"] = hashlib.sha256((tmp_path / "classifier.skops").read_bytes()).hexdigest()
    (tmp_path / "classifier.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not trusted.*NotAnEstimator"):
        QualityClassifier.load(tmp_path)


def test_classifier_for_another_embedding_model_is_refused(tmp_path):
    _saved_classifier(tmp_path)
    other = EmbeddingSpec("fedcba9876543210", "mean", 64, "float32", 8)
    with pytest.raises(ValueError, match="model_fingerprint: classifier '0123456789abcdef', model 'fedcba9876543210'"):
        QualityClassifier.load(tmp_path, other, "other-model")
    with pytest.raises(ValueError, match="pooling: classifier 'mean', model 'last'"):
        QualityClassifier.load(tmp_path, EmbeddingSpec(SPEC.model_fingerprint, "last", 64, "float32", 8))


def test_training_needs_both_sides_of_the_threshold():
    labels = np.array([0, 1, 2, 2, 1, 0, 4])
    with pytest.raises(ValueError, match=">= 2 labelled documents on each side of the threshold 3"):
        train_classifier(_gaussian_data(labels), labels, SPEC)


# ---------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def tiny_model(tiny_hf_dir):
    return tiny_hf_dir("llama-gqa")


def _embed(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The public entry point, with the embedder the pipeline tests share (compiled once per process)."""
    return embed_texts(texts, model_dir, batch_size=8)


def _reference_embeddings(model_dir: Path, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, last) of the full unpadded hidden states of each text, one document at a time, in NumPy."""
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    graphdef, params = nnx.split(load_model(model_source(model_dir), mesh))
    hidden_states = jax.jit(lambda p, ids: nnx.merge(graphdef, p).hidden_states(ids))
    tokenizer = load_tokenizer(str(model_dir))
    means, lasts = [], []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
        hidden = np.asarray(hidden_states(params, jnp.asarray([ids], jnp.int32)), np.float64)[0]
        means.append(hidden.mean(axis=0))
        lasts.append(hidden[-1])
    return np.array(means), np.array(lasts)


def test_pooling_equals_numpy_on_full_hidden_states(tiny_model):
    texts = _texts(4, max_words=10) + [" ".join(WORDS * 30)]  # two buckets; the last text is cut to max_length
    last_embedder = load_embedder(tiny_model, pooling="last", batch_size=8)
    assert last_embedder.mesh.size == 8 and last_embedder.max_length == 256
    assert last_embedder.tokenize(texts)[1][-1] > 256
    mean, last = _reference_embeddings(tiny_model, texts, 256)
    np.testing.assert_allclose(_embed(tiny_model, texts), mean, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(last_embedder.embed(texts), last, rtol=1e-5, atol=2e-5)


def test_padding_bucketing_and_batch_do_not_change_an_embedding(tiny_model):
    texts = _texts(9, seed=3)
    bucketed = _embed(tiny_model, texts)
    one_bucket = load_embedder(tiny_model, batch_size=16, buckets=(256,)).embed(texts)
    alone = np.concatenate([_embed(tiny_model, [text]) for text in texts[:3]])
    np.testing.assert_allclose(one_bucket, bucketed, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(alone, bucketed[:3], rtol=1e-5, atol=2e-5)


def test_sharded_over_8_devices_equals_single_device(tiny_model):
    texts = _texts(13, seed=4, max_words=10)
    single = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    one = load_embedder(tiny_model, batch_size=8, mesh=single)
    sharded = cached_embedder(str(tiny_model), batch_size=8)
    assert sharded.mesh.size == 8 and one.mesh.size == 1
    np.testing.assert_allclose(_embed(tiny_model, texts), one.embed(texts), rtol=1e-5, atol=2e-5)
    assert sharded.spec == one.spec  # the fingerprint does not depend on the mesh


def test_model_fingerprint_tells_models_apart(tiny_model, tmp_path):
    from rho_jax.models.parity import build_tiny_hf_model

    other = build_tiny_hf_model(tmp_path / "other", "llama-gqa", seed=1)
    spec = load_embedder(tiny_model, batch_size=8).spec
    assert spec == load_embedder(tiny_model, batch_size=16).spec
    assert spec.model_fingerprint != load_embedder(other, batch_size=8).spec.model_fingerprint


def test_empty_text_has_no_embedding(tiny_model):
    with pytest.raises(ValueError, match="text 1 of 2 has no tokens"):
        _embed(tiny_model, ["a cat", ""])


# ---------------------------------------------------------------- annotation


@pytest.mark.parametrize("completion, expected", [
    ("The extract explains addition with a worked example.\nScore: 4", (4, OK)),
    ("Score: 2 at first sight, but on reflection Score: 3", (3, OK)),
    ("Points: 1 + 1. score = **5**", (5, OK)),
    ("Score: 0", (0, OK)),
    ("Score: 7", (None, OUT_OF_RANGE)),
    ("Score: 2.5", (None, OUT_OF_RANGE)),
    ("Score: -1", (None, OUT_OF_RANGE)),
    ("I would give it four points.", (None, UNPARSEABLE)),
    ("", (None, UNPARSEABLE)),
])
def test_parse_score(completion, expected):
    answer = parse_score(completion, SCALES["edu"])
    assert (answer.label, answer.status) == expected


@pytest.mark.parametrize("completion, expected", [
    (" Yes", (1, OK)), ("no.", (0, OK)), ("**YES**, it teaches loops", (1, OK)), ("\nNo", (0, OK)),
    ("Maybe", (None, UNPARSEABLE)), ("yesterday", (None, UNPARSEABLE)), ("", (None, UNPARSEABLE)),
])
def test_parse_yes_no(completion, expected):
    answer = parse_yes_no(completion)
    assert (answer.label, answer.status) == expected


class _StubTokenizer:
    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text.split())))}

    def decode(self, ids):
        return " ".join("w" for _ in ids)


class _StubGenerator:
    """Answers prompt i with completions[i], in reverse order (as rows finishing out of order would)."""

    tokenizer = _StubTokenizer()
    max_length = 4096

    def __init__(self, completions):
        self.completions = completions
        self.prompts = None

    def generate(self, prompts, params, *, progress=True):
        from rho_jax.generation import Completion

        self.prompts, self.params = prompts, params
        for index in reversed(range(len(prompts))):
            yield index, Completion(self.completions[index], [], "stop", 0)


def test_annotate_documents_parses_and_counts():
    from datatrove.data import Document

    docs = [Document(text=f"document {i}", id=str(i)) for i in range(5)]
    generator = _StubGenerator(["Fine.\nScore: 4", "Score: 9", "no idea", "Score: 1", "Score: 4"])
    result = annotate_documents(docs, generator, RUBRICS["edu"], progress=False)
    assert [(r["id"], r["label"]) for r in result.labelled] == [("0", 4), ("3", 1), ("4", 4)]
    assert [(r["id"], r["status"]) for r in result.rejected] == [("1", OUT_OF_RANGE), ("2", UNPARSEABLE)]
    assert result.counts["ok"] == 3 and result.counts["unparseable"] == 1 and result.counts["out_of_range"] == 1
    assert result.counts["labels"] == {"0": 0, "1": 1, "2": 0, "3": 0, "4": 2, "5": 0}
    assert "document 3" in generator.prompts[3] and generator.params.temperature == 0.0


def test_sample_documents_is_uniform_without_repeats_and_seeded():
    picks = [sample_documents(range(50), 10, seed) for seed in range(200)]
    assert all(len(set(p)) == 10 and p == sorted(p) for p in picks)
    assert picks[0] == sample_documents(range(50), 10, 0)
    counts = np.bincount(np.concatenate(picks), minlength=50)
    assert counts.min() > 15 and counts.max() < 65  # 40 expected per item


def test_labels_outside_the_range_name_the_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    _write_jsonl(path, [{"text": "a", "label": 3}, {"text": "b", "label": 2.0}, {"text": "c", "label": 6}])
    with pytest.raises(ValueError, match=r"labels.jsonl, line 3: label 6 is outside the edu scale: labels must be integers 0..5"):
        read_labels(path, SCALES["edu"])
    _write_jsonl(path, [{"text": "a", "label": 1}, {"text": "b", "label": True}])
    with pytest.raises(ValueError, match=r"labels.jsonl, line 2: label True"):
        read_labels(path, SCALES["binary"])
    _write_jsonl(path, [{"text": "a", "label": 1}, {"label": 0}])
    with pytest.raises(ValueError, match=r"labels.jsonl, line 2: a labels row must be an object with a string 'text'"):
        read_labels(path, SCALES["binary"])
    _write_jsonl(path, [{"text": "a", "label": 1, "id": "x"}, {"text": "b", "label": 2.0}])
    assert [(r["id"], r["label"]) for r in read_labels(path, SCALES["edu"])] == [("x", 1), ("labels.jsonl:2", 2)]


def test_corpus_without_the_text_field_is_refused(tmp_path):
    _write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"content": "hello", "id": "1"}])
    with pytest.raises(ValueError, match=r"a.jsonl:1: the record has no 'text' field \(its fields: \['content', 'id'\]\)"):
        list(corpus_reader(tmp_path / "corpus").run())
    assert [d.text for d in corpus_reader(tmp_path / "corpus", text_key="content").run()] == ["hello"]


# ---------------------------------------------------------------- pipelines


def _labelled_rows(count: int) -> list[dict]:
    """Made-up documents of two kinds: worked arithmetic (labels 4-5) and link spam (labels 0-1)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        if i % 2 == 0:
            a, b = rng.integers(2, 99, 2)
            text = f"Problem: Tom has {a} clips and buys {b} more. Solution: {a} + {b} = {a + b}. The answer is {a + b}."
            rows.append({"id": f"math{i}", "text": text, "label": int(rng.integers(4, 6))})
        else:
            spam = " ".join(rng.choice(["click", "cheap", "sale", "login", "deal"], size=rng.integers(4, 25)))
            rows.append({"id": f"spam{i}", "text": f"Subscribe now!!! {spam}", "label": int(rng.integers(0, 2))})
    return rows


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """(work dir, corpus folder of 3 files, classifier dir) after `quality annotate --labels`, `embed`, `train`."""
    work = tmp_path_factory.mktemp("quality")
    rows = _labelled_rows(40)
    _write_jsonl(work / "human.jsonl", rows)
    for part in range(3):
        _write_jsonl(work / "corpus" / f"part{part}.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows[part::3]])
    assert quality_main(["annotate", "--labels", str(work / "human.jsonl"), "--output", str(work / "labels" / "l.jsonl")]) == 0
    assert quality_main(["embed", "--corpus", str(work / "labels" / "l.jsonl"), "--model", str(tiny_model), "--output",
                         str(work / "embedded"), "--batch-size", "8"]) == 0
    assert quality_main(["train", "--embeddings", str(work / "embedded"), "--output", str(work / "classifier"),
                         "--test-fraction", "0.25"]) == 0
    return work, work / "corpus", work / "classifier"


def test_embed_writes_npy_beside_each_shard(trained, tiny_model):
    work, _, _ = trained
    shards = read_embedded_shards(work / "embedded")
    assert len(shards.records) == 40 and shards.embeddings.shape == (40, 64)
    texts = [record["text"] for record in shards.records]
    np.testing.assert_allclose(shards.embeddings, _embed(tiny_model, texts), rtol=1e-5, atol=2e-5)
    assert {record["metadata"]["label"] for record in shards.records} <= {0, 1, 4, 5}
    assert shards.spec == load_embedder(tiny_model, batch_size=8).spec


def _expected_scores(corpus: Path, model: Path, classifier_dir: Path) -> dict[str, float]:
    docs = list(corpus_reader(corpus).run())
    classifier = QualityClassifier.load(classifier_dir)
    scores = classifier.score(_embed(model, [d.text for d in docs]))
    return dict(zip([d.id for d in docs], scores))


def test_filter_pipeline_keeps_and_drops_the_right_documents(trained, tiny_model, tmp_path):
    _, corpus, classifier_dir = trained
    expected = _expected_scores(corpus, tiny_model, classifier_dir)
    cutoff = float(np.median(list(expected.values())))
    pipeline = filter_pipeline(corpus, tiny_model, classifier_dir, tmp_path / "kept", tmp_path / "excluded", cutoff=cutoff,
                               batch_size=8)
    LocalPipelineExecutor(pipeline, tasks=2, workers=1, logging_dir=str(tmp_path / "logs")).run()
    kept, excluded = _read_shards(tmp_path / "kept"), _read_shards(tmp_path / "excluded")
    assert {d["id"] for d in kept} == {i for i, s in expected.items() if s >= cutoff}
    assert {d["id"] for d in excluded} == {i for i, s in expected.items() if s < cutoff}
    assert all(d["metadata"]["filter_reason"] == "below_threshold" for d in excluded)
    for doc in kept + excluded:
        assert doc["metadata"][SCORE_KEY] == pytest.approx(expected[doc["id"]], abs=1e-6)
        assert "embedding" not in doc["metadata"]


def test_filter_cli_top_fraction_and_report(trained, tiny_model, tmp_path):
    _, corpus, classifier_dir = trained
    expected = _expected_scores(corpus, tiny_model, classifier_dir)
    assert quality_main(["filter", "--corpus", str(corpus), "--model", str(tiny_model), "--classifier", str(classifier_dir),
                         "--output", str(tmp_path), "--top-fraction", "0.25", "--tasks", "2", "--batch-size", "8"]) == 0
    report = json.loads((tmp_path / "filter_report.json").read_text())
    ranked = sorted(expected.values(), reverse=True)
    assert report["cutoff"] == pytest.approx(ranked[9])  # ceil(0.25 * 40) = 10th best score
    kept = {d["id"] for d in _read_shards(tmp_path / "kept")}
    assert kept == {i for i, s in expected.items() if s >= report["cutoff"] - 1e-9}
    assert report["documents"] == 40 and report["kept"] == len(kept)
    assert report["dropped"] == {"below_threshold": 40 - len(kept)}
    assert "| kept |" in (tmp_path / "filter_report.md").read_text()


def test_training_report_separates_the_two_kinds(trained):
    report = json.loads((trained[2] / REPORT_JSON).read_text())["metrics"]
    assert report["documents"] == 10 and report["f1"] == 1.0


def test_filter_refuses_a_classifier_for_another_embedding_model(trained, tmp_path):
    from rho_jax.models.parity import build_tiny_hf_model

    _, corpus, classifier_dir = trained
    other = build_tiny_hf_model(tmp_path / "other", "llama-gqa", seed=5)
    pipeline = filter_pipeline(corpus, other, classifier_dir, tmp_path / "kept", tmp_path / "excluded", batch_size=8)
    with pytest.raises(ValueError, match="trained on other embeddings than those of .*other.*model_fingerprint"):
        LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(tmp_path / "logs")).run()
    assert not list(tmp_path.glob("kept/*.jsonl.gz"))


def test_train_cli_refuses_documents_without_labels(trained, tmp_path, tiny_model, capsys):
    _, corpus, _ = trained
    assert quality_main(["embed", "--corpus", str(corpus), "--model", str(tiny_model), "--output", str(tmp_path / "e"),
                         "--batch-size", "8"]) == 0
    assert quality_main(["train", "--embeddings", str(tmp_path / "e"), "--output", str(tmp_path / "c")]) == 2
    assert "00000.jsonl.gz:1: the document has no label" in capsys.readouterr().err


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
from datatrove.executor import LocalPipelineExecutor
from rho_jax.curation.quality_filter import filter_pipeline

def kill_at_rank_1(data, rank, world_size):
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    yield from data

pipeline = filter_pipeline({corpus!r}, {model!r}, {classifier!r}, {kept!r}, {excluded!r}, batch_size=8)
pipeline.insert(1, kill_at_rank_1)
LocalPipelineExecutor(pipeline, tasks=3, workers=1, logging_dir={logs!r}).run()
"""


@pytest.mark.slow
def test_filter_resumes_after_a_kill_without_redoing_finished_tasks(trained, tiny_model, tmp_path):
    _, corpus, classifier_dir = trained
    paths = dict(corpus=str(corpus), model=str(tiny_model), classifier=str(classifier_dir), kept=str(tmp_path / "kept"),
                 excluded=str(tmp_path / "excluded"), logs=str(tmp_path / "logs"))
    script = textwrap.dedent(_KILLED_RUN.format(root=str(Path(__file__).resolve().parents[1]), **paths))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    log = tmp_path / "killed_run.log"
    with open(log, "w") as out:
        killed = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            returncode = killed.wait(timeout=600)
        finally:  # datatrove's multiprocess manager outlives the killed run: end the run's process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(killed.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log.read_text()[-2000:]
    completions = tmp_path / "logs" / "completions"
    assert sorted(p.name for p in completions.iterdir()) == ["00000"]
    finished = [tmp_path / "kept" / "00000.jsonl.gz", tmp_path / "logs" / "stats" / "00000.json"]
    before = [p.stat().st_mtime_ns for p in finished]

    pipeline = filter_pipeline(corpus, tiny_model, classifier_dir, tmp_path / "kept", tmp_path / "excluded", batch_size=8)
    LocalPipelineExecutor(pipeline, tasks=3, workers=1, logging_dir=str(tmp_path / "logs")).run()
    assert sorted(p.name for p in completions.iterdir()) == ["00000", "00001", "00002"]
    assert [p.stat().st_mtime_ns for p in finished] == before  # task 0 was not run again
    expected = _expected_scores(corpus, tiny_model, classifier_dir)
    cutoff = QualityClassifier.load(classifier_dir).decision_score
    assert {d["id"] for d in _read_shards(tmp_path / "kept")} == {i for i, s in expected.items() if s >= cutoff}
    assert {d["id"] for d in _read_shards(tmp_path / "excluded")} == {i for i, s in expected.items() if s < cutoff}


@pytest.mark.slow
def test_annotate_cli_with_a_real_model(tiny_model, tmp_path):
    _write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(_texts(5, max_words=40))])
    output = tmp_path / "labels" / "phi.jsonl"
    assert quality_main(["annotate", "--corpus", str(tmp_path / "corpus"), "--model", str(tiny_model), "--rubric", "phi",
                         "--sample", "3", "--batch-size", "2", "--max-document-tokens", "64", "--output", str(output)]) == 0
    report = json.loads((tmp_path / "labels" / "phi.report.json").read_text())
    labelled = output.read_text().splitlines()
    rejected = (tmp_path / "labels" / "phi.rejected.jsonl").read_text().splitlines()
    assert report["documents"] == 3 and report["ok"] + report["unparseable"] + report["out_of_range"] == 3
    assert len(labelled) == report["ok"] and len(rejected) == 3 - report["ok"]
    assert all(json.loads(line)["status"] in (UNPARSEABLE, OUT_OF_RANGE) for line in rejected)


@pytest.mark.slow
def test_filter_under_slurm_runs_the_same_pipeline(trained, tiny_model, tmp_path):
    _, corpus, classifier_dir = trained
    stand_in = tmp_path / "bin"
    env = slurm_stand_in(stand_in, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    command = ["filter", "--corpus", str(corpus), "--model", str(tiny_model), "--classifier", str(classifier_dir),
               "--output", str(tmp_path / "out"), "--batch-size", "8", "--executor", "slurm", "--partition", "gpu",
               "--tasks", "2", "--gpus-per-task", "1", "--time", "2:00:00"]
    submit = subprocess.run([sys.executable, "-m", "rho_jax.curate", "quality", *command], env=env, capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert submit.returncode == 0, submit.stderr[-2000:]
    assert "run this command again when they are done" in submit.stdout
    assert not (tmp_path / "out" / "filter_report.json").exists()
    job = (stand_in / "job_1.sh").read_text()
    for directive in ("--array=0-1", "--partition=gpu", "--time=2:00:00", "--gpus=1", "--job-name=quality-filter"):
        assert f"#SBATCH {directive}\n" in job, directive
    for task in ("0", "1"):  # the cluster runs the job array
        ran = subprocess.run(["bash", str(stand_in / "job_1.sh")], env={**env, "SLURM_ARRAY_TASK_ID": task,
                             "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "42"}, capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr[-2000:]
    assert quality_main(command) == 0  # every task is done: nothing is submitted, the report is written
    assert len((stand_in / "sbatch_calls").read_text().splitlines()) == 2  # the array and datatrove's stats merge, once
    expected = _expected_scores(corpus, tiny_model, classifier_dir)
    cutoff = QualityClassifier.load(classifier_dir).decision_score
    assert {d["id"] for d in _read_shards(tmp_path / "out" / "kept")} == {i for i, s in expected.items() if s >= cutoff}
    report = json.loads((tmp_path / "out" / "filter_report.json").read_text())
    assert report["documents"] == 40 and report["kept"] + report["dropped"]["below_threshold"] == 40


@pytest.mark.slow
def test_embedding_benchmark_reports_both_variants(tiny_model, tmp_path, capsys):
    assert bench_main(["--model", str(tiny_model), "--docs", "48", "--rounds", "1", "--max-length", "256",
                       "--batch-size", "8", "--json", str(tmp_path / "bench.json")]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    bucketed, one = result["variants"]["bucketed"], result["variants"]["one bucket"]
    assert one["programs"] == 1 and bucketed["programs"] > 1
    tokens = sum(min(len(ids), 256) for ids in load_tokenizer(str(tiny_model))(make_documents(48))["input_ids"])
    assert one["padding_fraction"] == pytest.approx(1 - tokens / (6 * 8 * 256))  # 6 batches of 8 rows, all of 256
    assert bucketed["docs_per_s"] == pytest.approx(48 / bucketed["seconds"])
    assert "docs/s" in capsys.readouterr().out
