"""The CPU quickstart: its corpus (deterministic, disjoint, contamination planted, noise spans exact),
token labels, curve arithmetic, the report figures, and a shrunken end-to-end run through the real
curation and training CLIs."""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rho_jax.data.tokenizer import load_tokenizer
from rho_jax.quickstart import cli
from rho_jax.quickstart.corpus import (
    DECONTAMINATION_N,
    HIGH_QUALITY_KINDS,
    PLANT_VARIANTS,
    CorpusSpec,
    build_corpus,
    shipped_texts,
)
from rho_jax.quickstart.curves import tokens_to_reach
from rho_jax.quickstart.pipeline import QuickstartError, Settings, run
from rho_jax.quickstart.probe import LABELS, labelled_document, probe_batches
from rho_jax.quickstart.report import SeedResult, summarize

ROOT = Path(__file__).resolve().parents[1]
SMALL = CorpusSpec(seed=3, pool_clean_docs=200, pool_web_docs=40, pool_boilerplate_docs=20, pool_offdomain_docs=20,
                   planted_docs=8, labelled_docs=120, noisy_docs=200, heldout_docs=60, offdomain_docs=30, vocab_size=1024)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_jsonl_gz(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(path, "rt")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    build_corpus(SMALL, directory)
    return directory


def test_corpus_is_deterministic_and_seeded(corpus: Path, tmp_path: Path) -> None:
    build_corpus(SMALL, tmp_path / "again")
    for name in ("pool.jsonl", "annotations.jsonl", "noisy.jsonl", "heldout.jsonl", "tokenizer/tokenizer.json"):
        assert (tmp_path / "again" / name).read_bytes() == (corpus / name).read_bytes(), name
    other = CorpusSpec(**{**SMALL.__dict__, "seed": 4})
    build_corpus(other, tmp_path / "other")
    assert (tmp_path / "other" / "noisy.jsonl").read_bytes() != (corpus / "noisy.jsonl").read_bytes()


def word_ngrams(text: str, n: int = DECONTAMINATION_N) -> set[tuple[str, ...]]:
    """Independent of rho_jax.curation.ngrams: casefolded runs of letters and digits."""
    words = re.findall(r"[^\W_]+", text.casefold())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_corpus_splits_are_disjoint_and_noise_spans_are_exactly_the_injected_text(corpus: Path) -> None:
    problems = set(shipped_texts("gsm_symbolic"))
    offdomain = set(shipped_texts("offdomain"))
    pool = read_jsonl(corpus / "pool.jsonl")
    heldout = [r["text"] for r in read_jsonl(corpus / "heldout.jsonl")]
    noisy = read_jsonl(corpus / "noisy.jsonl")
    assert Counter(r["kind"] for r in pool) == {"clean": 200, "web": 40, "boilerplate": 20, "offdomain": 20, "contaminated": 8}
    assert len({r["id"] for r in pool}) == len(pool)
    reference = [r["text"] for r in pool if r["kind"] == "clean"]
    assert len(heldout) == 60 and len(noisy) == 230
    assert set(reference) <= problems and set(heldout) <= problems and not set(reference) & set(heldout)
    # Planted contamination: each a held-out problem, verbatim or reformatted; the variants take turns.
    planted = [r["text"] for r in pool if r["kind"] == "contaminated"]
    variants = Counter(name for text in planted for name, change in PLANT_VARIANTS.items()
                       if any(change(h) == text for h in heldout))
    assert variants == {name: 2 for name in PLANT_VARIANTS}
    held_grams = set().union(*map(word_ngrams, heldout))
    assert all(word_ngrams(text) & held_grams for text in planted)
    # The annotator's labels: a sample of the pool, high quality iff a clean worked problem.
    kinds = {r["id"]: r["kind"] for r in pool}
    annotations = read_jsonl(corpus / "annotations.jsonl")
    assert len(annotations) == 120 and {a["label"] for a in annotations} == {0, 1}
    assert all(a["label"] == (kinds[a["id"]] in HIGH_QUALITY_KINDS) for a in annotations)

    recovered_problems, offdomain_docs, web_chars, total_chars = [], 0, 0, 0
    for record in noisy:
        text, spans = record["text"], record["noise"]
        total_chars += len(text)
        if spans and spans[0][2] == "offdomain":
            assert spans == [[0, len(text), "offdomain"]] and text in offdomain
            offdomain_docs += 1
            continue
        # Removing the web-noise lines must give back the original problem, character for character.
        noise_lines = set()
        for start, end, kind in spans:
            assert kind == "web" and (start == 0 or text[start - 1] == "\n") and (end == len(text) or text[end] == "\n")
            noise_lines.add((start, end))
            web_chars += end - start
        kept, position = [], 0
        for line in text.split("\n"):
            if (position, position + len(line)) not in noise_lines:
                kept.append(line)
            position += len(line) + 1
        recovered_problems.append("\n".join(kept))
    assert offdomain_docs == 30
    assert set(recovered_problems) <= problems
    assert not set(recovered_problems) & (set(reference) | set(heldout))
    assert not {r["text"] for r in pool if r["kind"] == "offdomain"} & {r["text"] for r in noisy}
    assert 0.1 < web_chars / total_chars < 0.5


def test_token_labels_follow_the_noise_spans(corpus: Path) -> None:
    tokenizer = load_tokenizer(str(corpus / "tokenizer"))
    record = next(r for r in read_jsonl(corpus / "noisy.jsonl") if r["noise"][0][2] == "web")
    document = labelled_document(tokenizer, record)
    tokens, labels = document["tokens"], document["labels"]
    assert tokens[-1] == tokenizer.eos_token_id
    # Independent check: decode token by token, and look up the label of each token's last character.
    text, position = record["text"], 0
    for token, label in zip(tokens[:-1], labels[:-1]):
        piece = tokenizer.decode([int(token)])
        assert text.startswith(piece, position)
        position += len(piece)
        last = position - 1
        inside = [kind for start, end, kind in record["noise"] if start <= last < end]
        assert LABELS[label] == (inside[0] if inside else "clean")
    assert position == len(text)
    assert labels[-1] == labels[-2]  # EOS takes the label of the token before it
    assert {0, 1} <= set(labels.tolist())


def test_probe_batches_match_training_packing(corpus: Path) -> None:
    tokenizer = load_tokenizer(str(corpus / "tokenizer"))
    batches = probe_batches(corpus / "noisy.jsonl", tokenizer, seq_len=64, batch_rows=4, num_batches=3)
    assert len(batches) == 3
    records = read_jsonl(corpus / "noisy.jsonl")
    stream = np.concatenate([labelled_document(tokenizer, r)["tokens"] for r in records[:40]])
    labels = np.concatenate([labelled_document(tokenizer, r)["labels"] for r in records[:40]])
    for i, batch in enumerate(batches):
        assert batch["input_ids"].shape == batch["labels"].shape == (4, 64)
        for row in range(4):
            start = (i * 4 + row) * 65  # rows of seq_len + 1 tokens, cut from the concatenated documents
            np.testing.assert_array_equal(batch["input_ids"][row], stream[start : start + 64])
            np.testing.assert_array_equal(batch["targets"][row], stream[start + 1 : start + 65])
            np.testing.assert_array_equal(batch["labels"][row], labels[start + 1 : start + 65])
    with pytest.raises(ValueError, match="the probe needs"):
        probe_batches(corpus / "noisy.jsonl", tokenizer, seq_len=64, batch_rows=4, num_batches=10**5)


def test_tokens_to_reach_interpolates_between_evaluations() -> None:
    curve = [(0, 7.0), (100, 6.0), (200, 5.0), (300, 4.5)]
    assert tokens_to_reach(curve, 5.5) == pytest.approx(150.0)
    assert tokens_to_reach(curve, 5.0) == pytest.approx(200.0)
    assert tokens_to_reach(curve, 4.75) == pytest.approx(250.0)
    assert tokens_to_reach(curve, 4.0) is None
    assert tokens_to_reach(curve, 8.0) == 0.0


def test_summary_figures() -> None:
    counts = lambda clean, web: {"clean": {"tokens": 100, "selected": clean}, "web": {"tokens": 50, "selected": web},  # noqa: E731
                                 "offdomain": {"tokens": 0, "selected": 0}}
    results = [
        SeedResult(0, [(0, 7.0), (100, 6.0), (200, 5.0)], [(0, 7.0), (100, 5.0), (200, 4.6)], 0.6,
                   {0: counts(80, 10), 10: counts(90, 5)}),
        SeedResult(1, [(0, 7.0), (100, 6.2), (200, 5.2)], [(0, 7.0), (100, 5.4), (200, 5.0)], 0.6,
                   {0: counts(70, 20), 10: counts(90, 15)}),
    ]
    summary = summarize(results)
    assert [s["slm_minus_clm"] for s in summary["seeds"]] == pytest.approx([-0.4, -0.2])
    assert summary["slm_minus_clm"]["mean"] == pytest.approx(-0.3)
    assert summary["slm_minus_clm"]["std"] == pytest.approx(math.sqrt(0.02))
    # seed 0: 5.0 is reached at 100 + 100 * (5.0 - 5.0) / ... = 100 tokens; seed 1: 5.2 between 5.4 and 5.0 -> 150
    assert [s["slm_tokens_to_clm_final"] for s in summary["seeds"]] == pytest.approx([100.0, 150.0])
    assert summary["slm_fraction_of_tokens"]["mean"] == pytest.approx(0.625)
    assert summary["slm_wins"] == 2
    assert summary["selection_rates"]["clean"] == pytest.approx((80 + 90 + 70 + 90) / 400)
    assert summary["selection_rates"]["web"] == pytest.approx((10 + 5 + 20 + 15) / 200)
    assert summary["selection_by_step"][10]["web"] == pytest.approx(20 / 100)
    assert math.isnan(summary["selection_rates"]["offdomain"])


SHRUNKEN = dict(
    seeds=(0, 1),
    configs=str(ROOT / "configs" / "quickstart"),
    corpus=SMALL,
    embedder_overrides=("train.total_steps=8", "optimizer.warmup_steps=2", "logging.progress_bar=false"),
    reference_overrides=("train.total_steps=16", "optimizer.warmup_steps=2", "logging.progress_bar=false"),
    overrides=("train.total_steps=8", "optimizer.warmup_steps=2", "checkpoint.every_tokens=8192", "eval.every_tokens=8192",
               "eval.max_rows=16",
               "logging.progress_bar=false"),
    probe_batches=2,
)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Settings, dict]:
    settings = Settings(output=str(tmp_path_factory.mktemp("qs") / "out"), **SHRUNKEN)
    return settings, run(settings)


@pytest.mark.slow
def test_shrunken_quickstart_writes_a_sane_report(quickstart) -> None:
    settings, summary = quickstart
    out = Path(settings.output)
    for name in ("report.md", "report.json", "heldout_loss.png", "selected_tokens.html", "quickstart.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "heldout_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert [s["seed"] for s in report["seeds"]] == [0, 1]
    log_vocab = math.log(1024)
    for seed in report["seeds"]:
        assert seed["tokens"] == 8 * 8 * 256
        assert 0 < seed["slm_final_loss"] < log_vocab and 0 < seed["clm_final_loss"] < log_vocab
        assert seed["selected_fraction"] == pytest.approx(0.5, abs=0.002)
    # Step 0 (initialization) and the checkpoints at steps 4 and 8 were probed.
    assert list(report["selection_by_step"]) == ["0", "4", "8"]
    rates = report["selection_rates"]
    assert rates["web"] < 0.5 < rates["clean"]  # even a 16-step reference tells boilerplate from math
    markdown = (out / "report.md").read_text()
    assert "| 0 |" in markdown and "| 1 |" in markdown and "SLM beat CLM on held-out loss in" in markdown
    page = (out / "selected_tokens.html").read_text()
    assert page.count('class="doc"') >= 2 and 'class="sel' in page and "mark" in page
    # The runs are ordinary training runs, resumable with the printed commands.
    for name in ("embedder", "reference", "clm-seed0", "slm-seed0", "clm-seed1", "slm-seed1"):
        assert (out / name / "done.json").is_file()
    slm_config = (out / "slm-seed1" / "config.yaml").read_text()
    assert "seed: 1" in slm_config and "ratio: 0.5" in slm_config


@pytest.mark.slow
def test_reference_data_is_curated_from_the_pool_and_reported(quickstart) -> None:
    from sklearn.metrics import f1_score, precision_score, recall_score

    settings, _ = quickstart
    out = Path(settings.output)
    facts = json.loads((out / "report.json").read_text())["reference_data"]
    pool = {r["id"]: r for r in read_jsonl(out / "data" / "pool.jsonl")}
    # The classifier's figures are sklearn's on the held-out predictions `quality train` stored (phi: high iff score >= 0.5).
    heldout = read_jsonl(out / "curation" / "classifier" / "heldout.jsonl")
    truth, predicted = [h["label"] for h in heldout], [int(h["score"] >= 0.5) for h in heldout]
    assert facts["classifier"]["heldout_documents"] == len(heldout) == 30 and facts["classifier"]["train_documents"] == 90
    assert facts["classifier"]["f1"] == pytest.approx(f1_score(truth, predicted))
    assert facts["classifier"]["precision"] == pytest.approx(precision_score(truth, predicted, zero_division=0))
    assert facts["classifier"]["recall"] == pytest.approx(recall_score(truth, predicted))
    # kept / total per kind, against the pool's truth; decontamination found every planted problem the filter kept,
    # and flagged exactly the other kept documents that share an n-gram with a held-out problem (template siblings).
    assert facts["filter"]["total"] == dict(Counter(r["kind"] for r in pool.values()))
    kept_report = json.loads((out / "curation" / "filtered" / "filter_report.json").read_text())
    assert sum(facts["filter"]["kept"].values()) == kept_report["kept"]
    decontamination = facts["decontamination"]
    heldout_texts = {r["text"] for r in read_jsonl(out / "data" / "heldout.jsonl")}
    held_grams = set().union(*map(word_ngrams, heldout_texts))
    kept_ids = {r["id"] for r in read_jsonl_gz(out / "curation" / "filtered" / "kept")}
    siblings = [doc_id for doc_id in kept_ids
                if pool[doc_id]["kind"] != "contaminated" and word_ngrams(pool[doc_id]["text"]) & held_grams]
    assert decontamination["planted"] == 8 and decontamination["other_documents_flagged"] == len(siblings)
    assert decontamination["planted_found"] == decontamination["planted_kept_by_filter"]
    assert decontamination["planted_kept_by_filter"] == facts["filter"]["kept"]["contaminated"]
    reference = read_jsonl(out / "curation" / "reference.jsonl")
    assert len(reference) == facts["reference"]["documents"]
    assert len(reference) == kept_report["kept"] - decontamination["planted_found"] - len(siblings)
    assert all(pool[r["id"]]["text"] == r["text"] and pool[r["id"]]["kind"] != "contaminated" for r in reference)
    assert not {r["text"] for r in reference} & heldout_texts
    # The reference model trained on exactly that file.
    assert str(out / "curation" / "reference.jsonl") in (out / "reference" / "config.yaml").read_text()
    markdown = (out / "report.md").read_text()
    assert "## Reference data" in markdown and f"F1 {facts['classifier']['f1']:.3f}" in markdown


@pytest.mark.slow
def test_selection_keeps_exactly_the_ratio_of_each_probe_batch(quickstart) -> None:
    settings, _ = quickstart
    from rho_jax.quickstart.probe import selection_counts
    from rho_jax.quickstart.selection import RunModels
    from rho_jax.sharding import make_mesh
    from rho_jax.training.config import load_config

    run_dir = Path(settings.output) / "slm-seed0"
    cfg = load_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    batches = probe_batches(Path(settings.output) / "data" / "noisy.jsonl", tokenizer, seq_len=cfg.data.seq_len,
                            batch_rows=cfg.batch_size, num_batches=1)
    models = RunModels(cfg, run_dir, make_mesh(cfg.mesh))
    counts = selection_counts(models.scorer, models.params(8), models.ref_params, batches)
    valid = int(batches[0]["valid"].sum())
    assert sum(c["tokens"] for c in counts.values()) == valid
    assert sum(c["selected"] for c in counts.values()) == math.ceil(0.5 * valid)


@pytest.mark.slow
def test_rerun_with_same_settings_resumes_and_other_settings_are_refused(quickstart, capsys) -> None:
    settings, summary = quickstart
    capsys.readouterr()
    again = run(settings)  # every run is complete: nothing is retrained, the report is the same
    assert json.dumps(again["seeds"]) == json.dumps(summary["seeds"])  # (as JSON: a rate of no tokens is NaN)
    output = capsys.readouterr()
    assert output.err.count("is already complete") == 6 and output.out.count("(done: ") == 6
    changed = Settings(**{**settings.__dict__, "seeds": (0, 1, 2)})
    with pytest.raises(QuickstartError, match=r"seeds: \[0, 1\] -> \[0, 1, 2\]"):
        run(changed)


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys) -> None:
    assert cli.main(["--output", str(tmp_path / "a"), "--corpus", "colour=3"]) == 2
    assert "expected FIELD=VALUE with FIELD one of" in capsys.readouterr().err
    assert cli.main(["--output", str(tmp_path / "b"), "--corpus", "noisy_docs=many"]) == 2
    assert "'many' is not a int" in capsys.readouterr().err
    assert cli.main(["--output", str(tmp_path / "c"), "--seeds", "1", "1"]) == 2
    assert "--seeds must be distinct" in capsys.readouterr().err
    assert cli.main(["--output", str(tmp_path / "t"), "--quality-threshold", "1.5"]) == 2
    assert "the quality threshold is a score of the 0/1 scale in (0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    assert cli.main(["--output", str(tmp_path / "d"), "--configs", str(ROOT / "configs" / "quickstart"),
                     "--override", "train.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "unrelated.txt").write_text("keep me")
    assert cli.main(["--output", str(tmp_path / "e")]) == 2
    assert "non-empty directory" in capsys.readouterr().err
    assert (tmp_path / "e" / "unrelated.txt").read_text() == "keep me"


def test_an_override_for_slm_leaves_clm_plain_clm(tmp_path):
    """`--override slm.ratio=0.7` changes SLM's ratio; CLM keeps no reference and ratio 1.0."""
    from rho_jax.quickstart.pipeline import check_plans, run_plans
    from rho_jax.training.config import load_config

    settings = Settings(output=str(tmp_path / "qs"), seeds=(0,), configs=str(ROOT / "configs" / "quickstart"),
                        overrides=("slm.ratio=0.7", "slm.ce_chunk_size=64"))
    reference, [(_, clm, slm)] = run_plans(settings, tmp_path / "qs")
    check_plans([reference, clm, slm])
    clm_cfg, slm_cfg = (load_config(plan.config, list(plan.overrides)) for plan in (clm, slm))
    assert clm_cfg.reference is None and clm_cfg.slm.ratio == 1.0 and clm_cfg.slm.ce_chunk_size == 64
    assert slm_cfg.reference is not None and slm_cfg.slm.ratio == 0.7 and slm_cfg.slm.ce_chunk_size == 64
