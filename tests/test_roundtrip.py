"""HF -> rho_jax -> HF and rho_jax -> orbax -> rho_jax keep every weight and every logit."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from transformers import AutoModelForCausalLM, AutoTokenizer

from rho_jax.convert import main as convert_main
from rho_jax.models import load_hf, load_orbax, save_hf, save_orbax
from rho_jax.models.parity import hf_reference_logits, random_token_ids


def _params(model) -> dict:
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("variant", ["llama-tied-embeddings", "llama-linear-rope-bias", "llama3-rope-scaling",
                                     "mistral-sliding-window"])
def test_hf_export_loads_in_transformers_with_identical_logits(tiny_hf_dir, tmp_path, variant):
    source = tiny_hf_dir(variant)
    exported = save_hf(load_hf(source), tmp_path / "export", tokenizer_from=source)
    ids = random_token_ids(320, batch=2, seq_len=20, seed=3)
    np.testing.assert_array_equal(hf_reference_logits(exported, ids), hf_reference_logits(source, ids))
    assert (exported / "tokenizer.json").exists()
    assert AutoTokenizer.from_pretrained(str(exported)).eos_token == "</s>"


def test_sharded_export_has_index_and_same_weights(tiny_hf_dir, tmp_path):
    source = tiny_hf_dir("llama-gqa")
    model = load_hf(source)
    exported = save_hf(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and all((exported / f).exists() for f in files)
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert index["metadata"]["total_size"] == model.config.num_parameters() * 4
    reloaded = _params(load_hf(exported))
    for path, value in _params(model).items():
        np.testing.assert_array_equal(reloaded[path], value)
    ids = random_token_ids(320, batch=1, seq_len=16, seed=4)
    np.testing.assert_array_equal(hf_reference_logits(exported, ids), hf_reference_logits(source, ids))


def test_bf16_export_rounds_each_weight_once(tiny_hf_dir, tmp_path):
    source = tiny_hf_dir("llama-gqa")
    model = load_hf(source)
    exported = save_hf(model, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((exported / "config.json").read_text())["dtype"] == "bfloat16"
    hf_model = AutoModelForCausalLM.from_pretrained(str(exported))
    assert str(next(hf_model.parameters()).dtype) == "torch.bfloat16"
    reloaded = _params(load_hf(exported))
    for path, value in _params(model).items():
        np.testing.assert_array_equal(reloaded[path], value.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_fp16_checkpoint_from_transformers_loads(tiny_hf_dir, tmp_path):
    source = tiny_hf_dir("llama-gqa")
    AutoModelForCausalLM.from_pretrained(str(source)).half().save_pretrained(str(tmp_path / "fp16"))
    fp32 = _params(load_hf(source))
    for path, value in _params(load_hf(tmp_path / "fp16")).items():
        np.testing.assert_array_equal(value, fp32[path].astype(np.float16).astype(np.float32))


@pytest.mark.slow
def test_orbax_round_trip_is_exact_and_casts_on_request(tiny_hf_dir, tmp_path):
    model = load_hf(tiny_hf_dir("mistral-sliding-window"))
    saved = save_orbax(model, tmp_path / "rho")
    restored = load_orbax(saved)
    assert restored.config == model.config
    for path, value in _params(model).items():
        np.testing.assert_array_equal(_params(restored)[path], value)
    ids = random_token_ids(320, batch=2, seq_len=12, seed=5)
    np.testing.assert_array_equal(np.asarray(restored(ids)), np.asarray(model(ids)))
    as_bf16 = load_orbax(saved, param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(as_bf16, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}


def test_convert_cli_both_directions(tiny_hf_dir, tmp_path, capsys):
    source = tiny_hf_dir("llama-gqa")
    assert convert_main(["to-orbax", str(source), str(tmp_path / "rho")]) == 0
    assert (tmp_path / "rho" / "tokenizer.json").exists()
    assert convert_main(["to-hf", str(tmp_path / "rho"), str(tmp_path / "hf"), "--max-shard-size", "50KB"]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    ids = random_token_ids(320, batch=2, seq_len=16, seed=6)
    np.testing.assert_array_equal(hf_reference_logits(tmp_path / "hf", ids), hf_reference_logits(source, ids))


def test_convert_keeps_the_stored_dtype(tiny_hf_dir, tmp_path):
    source = tiny_hf_dir("llama-gqa")
    assert convert_main(["to-orbax", str(source), str(tmp_path / "rho"), "--param-dtype", "bfloat16"]) == 0
    assert load_orbax(tmp_path / "rho").layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    assert convert_main(["to-hf", str(tmp_path / "rho"), str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_save_refuses_to_replace_an_unrelated_directory(tiny_hf_dir, tmp_path, capsys):
    model = load_hf(tiny_hf_dir("llama-gqa"))
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "results.txt").write_text("keep me")
    for save in (save_hf, save_orbax):
        with pytest.raises(FileExistsError, match="refusing to replace"):
            save(model, precious)
    assert (precious / "results.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no staging folder left behind
    assert convert_main(["to-hf", str(tiny_hf_dir("llama-gqa")), str(precious)]) == 2
    assert "nor a rho_jax model directory" in capsys.readouterr().err


def test_save_refuses_to_replace_a_model_it_did_not_write(tiny_hf_dir, tmp_path):
    """An HF model directory (config.json and all) is not an earlier rho_jax export."""
    downloaded = tmp_path / "downloaded"
    shutil.copytree(tiny_hf_dir("llama-gqa"), downloaded)
    (downloaded / "README.md").write_text("model card")
    before = sorted(p.name for p in downloaded.iterdir())
    with pytest.raises(FileExistsError, match="rho_jax did not write"):
        save_hf(load_hf(downloaded), downloaded)
    assert sorted(p.name for p in downloaded.iterdir()) == before


def test_save_over_an_earlier_export_replaces_it(tiny_hf_dir, tmp_path):
    model = load_hf(tiny_hf_dir("llama-gqa"))
    target = tmp_path / "export"
    save_hf(model, target, max_shard_bytes=40_000)
    save_hf(model, target)  # a single file now: stale shards must be gone
    assert sorted(p.name for p in target.glob("*.safetensors")) == ["model.safetensors"]
    assert not (target / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
