"""Shipped model configs describe the real architectures (parameter counts of the released models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoConfig

from rho_jax.models import ModelConfig, ModelOptions
from rho_jax.models.params import abstract_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"

# Parameter counts of the released checkpoints (sum of tensor sizes in their safetensors).
KNOWN_PARAMETER_COUNTS = {
    "tinyllama-1.1b.yaml": 1_100_048_384,
    "mistral-7b.yaml": 7_241_732_096,
    "llama3.1-8b.yaml": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_config_builds_a_model_of_the_stated_size(name):
    cfg = ModelConfig.from_file(CONFIGS / name)
    _, abstract = abstract_model(cfg, ModelOptions())  # shapes only, nothing allocated
    counted = sum(math.prod(v.get_value().shape) for v in abstract.values())
    assert counted == cfg.num_parameters()
    if name in KNOWN_PARAMETER_COUNTS:
        assert counted == KNOWN_PARAMETER_COUNTS[name]


def test_hf_dict_round_trip():
    cfg = ModelConfig.from_file(CONFIGS / "llama3.1-8b.yaml")
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    assert cfg.to_hf_dict()["architectures"] == ["LlamaForCausalLM"]
    assert "sliding_window" not in cfg.to_hf_dict()


@pytest.mark.parametrize("model_type", ["llama", "mistral"])
def test_omitted_fields_take_the_transformers_defaults(model_type):
    """A config.json that leaves a field out means transformers' default for that model type."""
    cfg = ModelConfig.from_hf_dict({"model_type": model_type})
    hf = AutoConfig.for_model(model_type).to_dict()
    for field, value in cfg.to_hf_dict().items():
        if field not in ("architectures", "dtype", "rope_parameters"):
            assert hf[field] == value, field
    assert hf["rope_parameters"] == cfg.rope_parameters.to_dict()


def test_hf_config_object_agrees(tmp_path):
    """transformers reads our config.json into the same architecture."""
    cfg = ModelConfig.from_file(CONFIGS / "mistral-7b.yaml")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    hf = AutoConfig.from_pretrained(str(tmp_path))
    assert type(hf).__name__ == "MistralConfig"
    for field in ("hidden_size", "num_key_value_heads", "head_dim", "sliding_window", "intermediate_size"):
        assert getattr(hf, field) == getattr(cfg, field)
    assert ModelConfig.from_hf_dict(hf.to_dict()) == cfg
