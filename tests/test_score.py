"""Offline reference scores: scoring, training on them exactly like online scoring, resume, guard rails."""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest
import yaml
from cluster_runs import assert_succeeded, run_processes
from train_runs import ROOT, TINY, final_params, losses, model_yaml, run_config

from rho_jax.data import SourceConfig
from rho_jax.data.prepare import main as prepare
from rho_jax.data.scores import METADATA_FILE, read_metadata, record_to_scores, score_shard_name
from rho_jax.data.sources import open_source
from rho_jax.models.parity import build_tiny_tokenizer
from rho_jax.score import ScoreConfig
from rho_jax.score import main as score_main
from rho_jax.train import main as train
from rho_jax.training.config import ConfigError, load_config
from rho_jax.training.run_dir import read_jsonl

SEQ_LEN = 32


def prepare_rows(output, *, seq_len=SEQ_LEN, rows_per_shard=64, tokenizer=TINY / "tokenizer", corpus="web"):
    prepare(["--tokenizer", str(tokenizer), "--seq_len", str(seq_len), "--output", str(output),
             "--rows_per_shard", str(rows_per_shard), str(TINY / f"{corpus}.jsonl")])
    return output


def score_config(tmp, name, rows, reference, **fields):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"reference": {"init": "checkpoint", "path": str(reference)}, "rows": str(rows),
                                    "output": str(tmp / name), "batch_size": 16, **fields}))
    return path


def stored(scores_dir):
    """Every stored score, {shard: float32 [rows, 2, seq_len]}."""
    metadata = read_metadata(scores_dir)
    out = {}
    for shard in metadata["shards"]:
        records = grain.sources.ArrayRecordDataSource([str(scores_dir / score_shard_name(shard))])
        rows = [record_to_scores(records[i], metadata["seq_len"], metadata["dtype"]) for i in range(len(records))]
        out[shard] = np.stack([np.stack([r["ref_loss"], r["ref_entropy"]]) for r in rows])
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(tmp, rows dir, reference run, float32 scores dir, model section shared by the runs)."""
    tmp = tmp_path_factory.mktemp("score")
    rows = prepare_rows(tmp / "web-rows")
    model = {"init": "scratch", "config": model_yaml(tmp)}
    clean = [{"name": "clean", "paths": [str(TINY / "clean.jsonl")]}]
    assert train(["--config", str(run_config(tmp, "reference", model=model, data={"sources": clean},
                                              eval={"sets": {}}))]) == 0
    assert score_main(["--config", str(score_config(tmp, "scores32", rows, tmp / "reference"))]) == 0
    return tmp, rows, tmp / "reference", tmp / "scores32", model


def slm_sections(scored, reference, scores_dir=None):
    tmp, rows, _, _, model = scored
    source = {"name": "web", "paths": [str(rows / "*.array_record")], "scores": None if scores_dir is None else str(scores_dir)}
    return dict(model=model, reference=reference, slm={"ratio": 0.6}, data={"sources": [source]},
                train={"batch_size": 16, "total_steps": 8, "accumulation_steps": 2})


@pytest.mark.slow
def test_scoring_writes_every_shard_with_its_fingerprints(scored):
    tmp, rows, _, scores_dir, _ = scored
    metadata = read_metadata(scores_dir)
    rows_metadata = json.loads((rows / "metadata.json").read_text())
    assert metadata["complete"] and metadata["finished_shards"] == rows_metadata["shards"]
    assert metadata["seq_len"] == SEQ_LEN and metadata["dtype"] == "float32"
    values = stored(scores_dir)
    assert sum(len(v) for v in values.values()) == rows_metadata["num_rows"]
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in values.values())


@pytest.mark.slow
@pytest.mark.parametrize("score", ["excess", "intersection"])
def test_training_on_precomputed_scores_equals_online_scoring(scored, score):
    tmp, _, reference, scores_dir, _ = scored
    online = slm_sections(scored, {"init": "checkpoint", "path": str(reference)})
    offline = slm_sections(scored, {"init": "precomputed"}, scores_dir)
    for sections in (online, offline):
        sections["slm"] = {"ratio": 0.6, "score": score}
    assert train(["--config", str(run_config(tmp, f"online-{score}", **online))]) == 0
    assert train(["--config", str(run_config(tmp, f"offline-{score}", **offline))]) == 0
    a, b = (read_jsonl(tmp / f"{kind}-{score}" / "metrics.jsonl") for kind in ("online", "offline"))
    for key in ("selected_fraction", "num_selected"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key
    np.testing.assert_allclose(list(losses(tmp / f"offline-{score}").values()),
                               list(losses(tmp / f"online-{score}").values()), rtol=1e-6)
    for key in ("ref_loss", "loss_unselected"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-6, err_msg=key)
    for x, y in zip(final_params(tmp / f"offline-{score}"), final_params(tmp / f"online-{score}")):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_float16_storage_is_the_float32_scores_rounded(scored):
    tmp, rows, reference, scores_dir, _ = scored
    assert score_main(["--config", str(score_config(tmp, "scores16", rows, reference, dtype="float16"))]) == 0
    half, full = stored(tmp / "scores16"), stored(scores_dir)
    for shard in full:
        np.testing.assert_array_equal(half[shard], full[shard].astype(np.float16).astype(np.float32))


@pytest.mark.slow
def test_an_interrupted_scoring_run_continues_with_the_unfinished_shards(scored):
    tmp, rows, reference, scores_dir, _ = scored
    config = score_config(tmp, "resumed", rows, reference)
    assert score_main(["--config", str(config)]) == 0
    output = tmp / "resumed"
    metadata = json.loads((output / METADATA_FILE).read_text())
    last = metadata["shards"][-1]
    # as if killed while scoring the last shard: not listed as finished, a partial temporary file left
    metadata["finished_shards"].remove(last)
    metadata["complete"] = False
    (output / METADATA_FILE).write_text(json.dumps(metadata))
    shard_file = output / last.replace("rows", "scores")
    shard_file.rename(shard_file.with_name(shard_file.name + ".tmp"))
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("scores-*.array_record")}
    assert score_main(["--config", str(config)]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in output.glob("scores-*.array_record")}
    assert {k: after[k] for k in before} == before  # finished shards were not redone
    assert read_metadata(output)["complete"] and not list(output.glob("*.tmp"))
    for shard, values in stored(output).items():
        np.testing.assert_array_equal(values, stored(scores_dir)[shard])


@pytest.mark.slow
def test_scores_of_other_rows_are_refused(scored, tmp_path):
    _, rows, _, scores_dir, _ = scored
    other_packing = prepare_rows(tmp_path / "reshard", rows_per_shard=50)
    other_seq_len = prepare_rows(tmp_path / "seq16", seq_len=16)
    build_tiny_tokenizer(tmp_path / "tok", vocab_size=300)
    other_tokenizer = prepare_rows(tmp_path / "tok-rows", tokenizer=tmp_path / "tok")
    cases = [(other_packing, "scores were computed for other packed rows"),
             (other_seq_len, "the scores are for seq_len 32, the rows for seq_len 16"),
             (other_tokenizer, "computed on rows tokenized with another tokenizer")]
    for directory, message in cases:
        with pytest.raises(ValueError, match=message):
            open_source(SourceConfig(paths=(str(directory / "*.array_record"),), scores=str(scores_dir)))
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    metadata = json.loads((scores_dir / METADATA_FILE).read_text())
    (incomplete / METADATA_FILE).write_text(json.dumps({**metadata, "finished_shards": metadata["shards"][:1]}))
    with pytest.raises(ValueError, match="have no scores yet .* Rerun the same python -m rho_jax.score"):
        open_source(SourceConfig(paths=(str(rows / "*.array_record"),), scores=str(incomplete)))


@pytest.mark.slow
def test_precomputed_training_with_mismatched_scores_fails_before_training(scored, tmp_path, capsys):
    _, _, _, scores_dir, _ = scored
    other = prepare_rows(tmp_path / "reshard", rows_per_shard=50)
    sections = slm_sections(scored, {"init": "precomputed"}, scores_dir)
    sections["data"]["sources"][0]["paths"] = [str(other / "*.array_record")]
    assert train(["--config", str(run_config(tmp_path, "run", **sections))]) == 2
    assert "scores were computed for other packed rows" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s["data"]["sources"][0].update(scores=None), r"precomputed needs scores for every data source; \['web'\]"),
    (lambda s: s.update(reference={"init": "checkpoint", "path": "x"}),
     "data sources carry precomputed scores, but the reference is computed online"),
    (lambda s: s.update(model={"init": "precomputed", "config": None}), "model.init: precomputed is for the reference only"),
    (lambda s: s.update(reference={"init": "precomputed", "path": "x"}), "init: precomputed takes no path"),
])
def test_precomputed_config_errors(scored, tmp_path, change, message):
    _, _, _, scores_dir, _ = scored
    sections = slm_sections(scored, {"init": "precomputed"}, scores_dir)
    change(sections)
    with pytest.raises(ConfigError, match=message):
        load_config(run_config(tmp_path, "run", **sections))


def test_scores_on_raw_documents_are_refused(scored):
    _, _, _, scores_dir, _ = scored
    with pytest.raises(ValueError, match="scores belong to prepared rows"):
        open_source(SourceConfig(paths=(str(TINY / "web.jsonl"),), scores=str(scores_dir)))


def test_scoring_into_another_runs_output_is_refused(scored, capsys):
    tmp, rows, reference, _, _ = scored
    config = score_config(tmp, "scores32", rows, reference, dtype="float16")  # same output, other dtype
    assert score_main(["--config", str(config)]) == 2
    assert "holds scores of another run (different dtype)" in capsys.readouterr().err


def test_shipped_score_config_loads():
    cfg = load_config(ROOT / "configs/score/tinyllama.yaml", cls=ScoreConfig)
    assert cfg.reference.init == "checkpoint" and cfg.dtype == "float32"
    train_cfg = load_config(ROOT / "configs/tinyllama-slm-precomputed.yaml")
    assert train_cfg.precomputed_reference and train_cfg.data.sources[0].scores == cfg.output


@pytest.mark.slow
@pytest.mark.multiprocess
def test_scoring_on_two_processes_writes_the_same_scores(scored):
    tmp, rows, reference, scores_dir, _ = scored
    config = score_config(tmp, "scores-2proc", rows, reference)
    assert_succeeded(run_processes(config, processes=2, devices=4, module="rho_jax.score"))
    assert read_metadata(tmp / "scores-2proc")["complete"]
    for shard, values in stored(tmp / "scores-2proc").items():
        np.testing.assert_allclose(values, stored(scores_dir)[shard], rtol=1e-6, atol=1e-6)
