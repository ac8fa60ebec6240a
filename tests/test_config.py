"""Run configuration: strict YAML loading, CLI overrides, impossible combinations, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rho_jax.training.config import ConfigError, RunConfig, config_differences, load_config
from rho_jax.training.schema import to_data

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "output_dir": "runs/x",
    "model": {"init": "scratch", "config": "configs/models/tiny-cpu.yaml"},
    "data": {"tokenizer": "tok", "seq_len": 64, "sources": [{"paths": ["a.jsonl"]}]},
    "train": {"batch_size": 8, "total_steps": 10},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def load(tmp_path: Path, data: dict, *overrides: str) -> RunConfig:
    return load_config(write(tmp_path, data), list(overrides))


def test_defaults_and_derived_values(tmp_path):
    cfg = load(tmp_path, BASE)
    assert cfg.slm.ratio == 1.0 and cfg.reference is None  # no reference: plain CLM
    assert cfg.tokens_per_step == 8 * 64 and cfg.total_steps == 10
    assert cfg.optimizer_config().total_steps == 10
    assert cfg.checkpoint.every_tokens == 1_000_000_000
    with_ref = load(tmp_path, {**BASE, "reference": {"init": "hf", "path": "ref"}})
    assert with_ref.slm.ratio == 0.6 and with_ref.slm.score == "excess"  # the paper's default


def test_batch_and_length_in_tokens(tmp_path):
    cfg = load(tmp_path, {**BASE, "train": {"batch_tokens": 1024, "total_tokens": 10_000}})
    assert cfg.batch_size == 16 and cfg.total_steps == 10  # ceil(10000 / 1024)


@pytest.mark.parametrize("overrides, check", [
    (["train.total_steps=50"], lambda c: c.total_steps == 50),
    (["data.sources.0.weight=2.5"], lambda c: c.data.sources[0].weight == 2.5),
    (["model.options.remat=dots", "model.options.dtype=bfloat16"],
     lambda c: c.model.options.remat == "dots" and c.model.options.dtype.name == "bfloat16"),
    (["reference.init=hf", "reference.path=/ref", "slm.ratio=0.7"],
     lambda c: c.reference.path == "/ref" and c.slm.ratio == 0.7),
    (["checkpoint.every_tokens=1.0e+6"], lambda c: c.checkpoint.every_tokens == 1_000_000),
    (["eval.sets.heldout.paths=[h.jsonl]"], lambda c: c.eval.sets["heldout"].paths == ("h.jsonl",)),
])
def test_cli_overrides(tmp_path, overrides, check):
    assert check(load(tmp_path, BASE, *overrides))


@pytest.mark.parametrize("overrides, message", [
    (["data.seqlen=5"], r"config\.data\.seqlen: unknown key\. Did you mean 'seq_len'\?"),
    (["bogus=1"], r"config\.bogus: unknown key"),
    (["data.seq_len=abc"], r"config\.data\.seq_len: expected an integer, got 'abc'"),
    (["data.seq_len=2.5"], r"config\.data\.seq_len: expected an integer, got 2\.5"),
    (["train.seed=true"], r"config\.train\.seed: expected an integer, got True"),
    (["checkpoint.every_tokens=1e9"], r"YAML reads 1e9 as a string"),
    (["data.sources=a.jsonl"], r"config\.data\.sources: expected a list"),
    (["slm.ratio=1.5"], r"ratio must be a number in \(0, 1\]"),
    (["slm.ratio=0.6"], r"needs a reference model"),
    (["slm.score=entropy"], r"Unknown score function 'entropy'"),
    (["train.batch_tokens=512"], r"set exactly one of batch_size and batch_tokens"),
    (["train.batch_size=null", "train.batch_tokens=100"], r"batch_tokens \(100\) must be a multiple of data\.seq_len"),
    (["train.accumulation_steps=3"], r"not divisible by train\.accumulation_steps=3"),
    (["optimizer.total_steps=7"], r"optimizer\.total_steps \(7\) disagrees with the run length"),
    (["optimizer.warmup_steps=11"], r"exceeds the run's 10 steps"),
    (["reference.init=scratch", "reference.config=x.yaml"], r"a reference model must be trained"),
    (["model.init=hf"], r"init: hf needs `path`"),
    (["model.init=magic"], r"init must be one of"),
    (["mesh.tensor=0"], r"mesh\.tensor must be a positive integer or -1"),
    (["data.sources.3.weight=1"], r"'3' is not an index of a list of 1 items"),
    (["data.seq_len"], r"not of the form key\.sub=value"),
    (["model.options.remat=sometimes"], r"Unknown remat policy"),
])
def test_bad_config_is_refused_with_the_field_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, BASE, *overrides)


@pytest.mark.parametrize("override, shows_hint", [
    ("train.total_steps=abc", False),
    ("optimizer.learning_rate=fast", False),
    ("data.seq_len=nan", False),
    ("checkpoint.every_tokens=1e9", True),
    ("optimizer.learning_rate=3e-4", True),
])
def test_yaml_number_hint_only_for_numbers_read_as_strings(tmp_path, override, shows_hint):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"config\.{key}: expected .*, got '{value}' \(str\)") as raised:
        load(tmp_path, BASE, override)
    assert ("YAML reads 1e9 as a string" in str(raised.value)) == shows_hint


def test_missing_required_section_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="missing required key"):
        load(tmp_path, {k: v for k, v in BASE.items() if k != "data"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load(tmp_path, BASE, "model.options.dtype=bfloat16", "reference.init=hf", "reference.path=r")
    again = load(tmp_path, yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert config_differences(to_data(cfg), to_data(again)) == []
    changed = load(tmp_path, yaml.safe_load(cfg.to_yaml()), "data.seq_len=32")
    assert config_differences(to_data(cfg), to_data(changed)) == ["data.seq_len: 64 -> 32"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.total_steps > 0 and cfg.batch_size > 0
    if "slm" in path.name:
        assert cfg.reference is not None and cfg.slm.ratio < 1


def test_paper_settings_in_shipped_configs():
    tiny = load_config(ROOT / "configs/tinyllama-slm.yaml")
    assert (tiny.slm.ratio, tiny.optimizer.learning_rate, tiny.optimizer.schedule) == (0.6, 8e-5, "cosine")
    assert (tiny.data.seq_len, tiny.tokens_per_step) == (2048, 2**20)
    mistral = load_config(ROOT / "configs/mistral7b-slm.yaml")
    assert (mistral.slm.ratio, mistral.optimizer.learning_rate, mistral.data.seq_len) == (0.7, 2e-5, 4096)
    assert mistral.tokens_per_step == 2**20
