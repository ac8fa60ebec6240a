"""Checksummed score shards: damaged shards are refused by name before training, a rerun of the
scoring command repairs them, and metadata from before checksums still loads (with a warning)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_score import score_config, slm_sections, stored
from train_runs import TINY, model_yaml, run_config

from rho_jax.data import SourceConfig, prepared
from rho_jax.data.prepare import main as prepare
from rho_jax.data.scores import METADATA_FILE, check_scores, read_metadata, score_shard_name
from rho_jax.data.sources import open_source
from rho_jax.integrity import file_entry
from rho_jax.score import main as score_main
from rho_jax.train import main as train

RERUN = r"Rerun the same python -m rho_jax\.score command \(it verifies finished shards and recomputes damaged ones\)"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(tmp, rows dir, reference run, scores dir, model section): a few documents packed into 4 shards
    (the first two full, so of equal size), scored by a briefly trained reference."""
    tmp = tmp_path_factory.mktemp("integrity")
    corpus = tmp / "web.jsonl"
    corpus.write_text("".join((TINY / "web.jsonl").read_text().splitlines(keepends=True)[:12]))
    rows = tmp / "web-rows"
    prepare(["--tokenizer", str(TINY / "tokenizer"), "--seq_len", "32", "--output", str(rows),
             "--rows_per_shard", "40", str(corpus)])
    model = {"init": "scratch", "config": model_yaml(tmp)}
    clean = [{"name": "clean", "paths": [str(TINY / "clean.jsonl")]}]
    assert train(["--config", str(run_config(tmp, "reference", model=model, data={"sources": clean},
                                              train={"batch_size": 8, "total_steps": 2}, eval={"sets": {}}))]) == 0
    assert score_main(["--config", str(score_config(tmp, "scores", rows, tmp / "reference"))]) == 0
    return tmp, rows, tmp / "reference", tmp / "scores", model


def copy_scores(scored, destination: Path) -> Path:
    shutil.copytree(scored[3], destination)
    return destination


def truncate(directory: Path) -> str:
    path = directory / "scores-00001.array_record"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "is truncated"


def random_bytes(directory: Path) -> str:
    path = directory / "scores-00001.array_record"
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))
    return "has other contents than were written"


def delete(directory: Path) -> str:
    (directory / "scores-00001.array_record").unlink()
    return "is missing"


def copy_another_shard_over(directory: Path) -> str:
    source, target = directory / "scores-00000.array_record", directory / "scores-00001.array_record"
    assert source.stat().st_size == target.stat().st_size  # only the sha256 tells them apart
    shutil.copyfile(source, target)
    return "has other contents than were written"


DAMAGES = [truncate, random_bytes, delete, copy_another_shard_over]


def test_scoring_records_every_shards_size_and_sha256(scored):
    _, rows, _, scores_dir, _ = scored
    shards = prepared.read_metadata(rows)["shards"]
    assert len(shards) == 4
    checksums = json.loads((scores_dir / METADATA_FILE).read_text())["shard_checksums"]
    assert checksums == {score_shard_name(s): file_entry(scores_dir / score_shard_name(s)) for s in shards}


@pytest.mark.parametrize("damage", DAMAGES)
def test_check_scores_names_a_damaged_shard_and_the_repair(scored, tmp_path, damage):
    _, rows, _, _, _ = scored
    scores_dir = copy_scores(scored, tmp_path / "scores")
    problem = damage(scores_dir)
    rows_metadata = prepared.read_metadata(rows)
    with pytest.raises(ValueError, match=rf"1 score shard\(s\) are damaged: .*scores-00001\.array_record {problem}.*{RERUN}"):
        check_scores(read_metadata(scores_dir), "here", rows_metadata, rows_metadata["shards"])
    check_scores(read_metadata(scores_dir), "here", rows_metadata, ["rows-00000.array_record"])  # reads only intact ones


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_training_on_a_damaged_shard_exits_2_naming_it(scored, tmp_path, capsys, damage):
    scores_dir = copy_scores(scored, tmp_path / "scores")
    problem = damage(scores_dir)
    sections = slm_sections(scored, {"init": "precomputed"}, scores_dir)
    assert train(["--config", str(run_config(tmp_path, "run", **sections))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{scores_dir / 'scores-00001.array_record'} {problem}" in err and "error: " in err
    assert "Rerun the same python -m rho_jax.score command" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_rerunning_score_recomputes_the_damaged_shards_then_training_works(scored, tmp_path, caplog):
    tmp, rows, reference, original, _ = scored
    scores_dir = copy_scores(scored, tmp_path / "scores")
    random_bytes(scores_dir)
    (scores_dir / "scores-00002.array_record").unlink()
    intact = {name: (scores_dir / name).stat().st_mtime_ns for name in ("scores-00000.array_record", "scores-00003.array_record")}
    assert score_main(["--config", str(score_config(tmp_path, "scores", rows, reference))]) == 0
    warning = "2 finished shard(s) are damaged and will be recomputed: scores-00001.array_record has other contents"
    assert warning in caplog.text and "scores-00002.array_record is missing" in caplog.text
    assert {name: (scores_dir / name).stat().st_mtime_ns for name in intact} == intact
    assert read_metadata(scores_dir)["complete"]
    for shard, values in stored(scores_dir).items():
        np.testing.assert_array_equal(values, stored(original)[shard])
    sections = slm_sections(scored, {"init": "precomputed"}, scores_dir)
    sections["train"]["total_steps"] = 2
    assert train(["--config", str(run_config(tmp_path, "run", **sections))]) == 0


def test_scores_without_checksums_load_and_continue_with_a_warning(scored, tmp_path, caplog):
    _, rows, reference, _, _ = scored
    scores_dir = copy_scores(scored, tmp_path / "scores")
    metadata = json.loads((scores_dir / METADATA_FILE).read_text())
    del metadata["shard_checksums"]
    (scores_dir / METADATA_FILE).write_text(json.dumps(metadata))
    source = open_source(SourceConfig(paths=(str(rows / "*.array_record"),), scores=str(scores_dir)))
    assert len(source) == prepared.read_metadata(rows)["num_rows"]
    assert "4 of 4 score shards (e.g. scores-00000.array_record) have no recorded checksum" in caplog.text
    before = {p.name: p.stat().st_mtime_ns for p in scores_dir.glob("scores-*.array_record")}
    assert score_main(["--config", str(score_config(tmp_path, "scores", rows, reference))]) == 0
    assert "4 finished shards (e.g. scores-00000.array_record) have no recorded checksum" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in scores_dir.glob("scores-*.array_record")} == before
