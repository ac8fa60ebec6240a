"""Models and tokenizers given as Hugging Face Hub ids, resolved from a fake HF cache (never online)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest
import yaml
from flax import nnx
from train_runs import run_config

from rho_jax.data import load_tokenizer, tokenizer_fingerprint
from rho_jax.models import hub
from rho_jax.sharding import make_mesh
from rho_jax.train import main
from rho_jax.training.config import ConfigError, ModelSource
from rho_jax.training.model_sources import load_model, read_model_config, tokenizer_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache in tmp_path, used by huggingface_hub in this test; offline mode on."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read by huggingface_hub at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def cache_model(cache: Path, repo_id: str, source: Path, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put the files of `source` into `cache` as snapshot COMMIT of `repo_id` (what snapshot_download
    leaves there), with each ref in `refs` pointing at it; returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir()
    for ref in refs:
        (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


def params(model) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]


def test_parse_hub_id():
    assert hub.parse_hub_id("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T") == (
        "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", None)
    assert hub.parse_hub_id("owner/name@v1.0") == ("owner/name", "v1.0")
    assert hub.parse_hub_id(f"owner/name@{COMMIT}") == ("owner/name", COMMIT)
    assert hub.parse_hub_id("owner/name@refs/pr/1") == ("owner/name", "refs/pr/1")
    for path in ("./no/such/dir", "no/such/dir", "/abs/name", "~/name", "../name", "name", "owner/.name",
                 "owner--x/name", "owner/a..b", "owner/name@", "owner/name@a b"):
        assert hub.parse_hub_id(path) is None, path


def test_cached_hub_model_loads_like_its_directory_offline(hf_cache, tiny_hf_dir):
    local = tiny_hf_dir("llama-gqa")
    snapshot = cache_model(hf_cache, "owner/name", local)
    source = ModelSource(init="hf", path="owner/name")
    assert hub.resolve_local_dir("owner/name", "model.path") == snapshot
    assert read_model_config(source) == read_model_config(ModelSource(init="hf", path=str(local)))
    assert tokenizer_dir(source) == snapshot
    mesh = make_mesh()
    from_hub, from_dir = load_model(source, mesh), load_model(ModelSource(init="hf", path=str(local)), mesh)
    for a, b in zip(params(from_hub), params(from_dir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert tokenizer_fingerprint(load_tokenizer("owner/name")) == tokenizer_fingerprint(load_tokenizer(str(local)))


def test_revision_selects_the_cached_ref_or_commit(hf_cache, tiny_hf_dir):
    snapshot = cache_model(hf_cache, "owner/name", tiny_hf_dir("llama-gqa"), refs=("main", "v1"))
    assert hub.resolve_local_dir("owner/name@v1", "model.path") == snapshot
    assert hub.resolve_local_dir(f"owner/name@{COMMIT}", "tokenizer", kind="tokenizer") == snapshot
    with pytest.raises(FileNotFoundError, match="owner/name@v2 is not in the local cache"):
        hub.resolve_local_dir("owner/name@v2", "model.path")


def test_uncached_hub_id_offline_is_a_clear_error(hf_cache):
    with pytest.raises(FileNotFoundError) as err:
        read_model_config(ModelSource(init="hf", path="owner/missing"), "reference")
    message = str(err.value)
    assert message.startswith("reference.path: 'owner/missing' is not a local directory")
    assert "Hub model owner/missing is not in the local cache" in message and "offline mode is on" in message
    with pytest.raises(FileNotFoundError, match="Hub tokenizer owner/missing is not in the local cache"):
        load_tokenizer("owner/missing")


@pytest.mark.parametrize("section, message", [
    ({"model": {"init": "hf", "path": "owner/missing", "config": None}}, "model.path: 'owner/missing' is not a local"),
    ({"data": {"tokenizer": "owner/missing"}}, "tokenizer: 'owner/missing' is not a local directory"),
])
def test_uncached_hub_id_fails_the_run_with_exit_code_2(hf_cache, tmp_path, capsys, section, message):
    config = run_config(tmp_path, "run")
    cfg = yaml.safe_load(config.read_text())
    for key, value in section.items():
        cfg[key] = {**cfg[key], **value}
    config.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "offline mode is on" in err


def test_missing_local_paths_keep_their_errors(hf_cache, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("a local path must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    with pytest.raises(ConfigError, match=r"model.path: no/such/dir is not a directory"):
        read_model_config(ModelSource(init="hf", path="./no/such/dir"))
    with pytest.raises(FileNotFoundError, match=r"tokenizer directory ./no/such/dir does not exist"):
        load_tokenizer("./no/such/dir")
    (hf_cache / "owner" / "name").mkdir(parents=True)  # an existing directory is used as it is, even when it
    monkeypatch.chdir(hf_cache)  # reads as a Hub id
    assert hub.resolve_local_dir("owner/name", "model.path") == Path("owner/name")


def test_online_download_asks_only_for_needed_files_at_one_commit(hf_cache, tiny_hf_dir, monkeypatch):
    """With the Hub reachable, config/tokenizer files come first, then exactly the shards the index
    lists, pinned to the commit of the first call; never .bin/.h5/onnx files."""
    snapshot = cache_model(hf_cache, "owner/sharded", tiny_hf_dir("llama-gqa"))
    (snapshot / "model.safetensors").rename(snapshot / "model-00001-of-00001.safetensors")
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}))
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert hub.resolve_local_dir("owner/sharded@main", "model.path") == snapshot
    assert hub.resolve_local_dir("owner/sharded@main", "model.path") == snapshot  # resolved once per process
    (first_id, first), (second_id, second) = calls
    assert first_id == second_id == "owner/sharded"
    assert first["revision"] == "main" and second["revision"] == COMMIT
    assert not first["local_files_only"] and not second["local_files_only"]
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json", "generation_config.json"} <= set(
        first["allow_patterns"])
    assert not any(p.endswith((".bin", ".pt", ".h5", ".onnx", ".msgpack", ".safetensors"))
                   for p in first["allow_patterns"])
    assert second["allow_patterns"] == ["model-00001-of-00001.safetensors"]
