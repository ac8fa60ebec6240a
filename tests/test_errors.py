"""Bad inputs fail with a message that names what was wrong and what is allowed."""

from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rho_jax.models import ModelConfig, ModelOptions, RopeParameters, load_hf, load_orbax


@pytest.fixture
def model_copy(tiny_hf_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_hf_dir("llama-gqa"), target)
    return target


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _edit_weights(directory, edit):
    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_unsupported_architecture_names_the_supported_ones(model_copy):
    _edit_config(model_copy, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*GPT2LMHeadModel.*LlamaForCausalLM.*MistralForCausalLM"):
        load_hf(model_copy)


def test_wrong_head_class_is_rejected(model_copy):
    _edit_config(model_copy, architectures=["LlamaForSequenceClassification"])
    with pytest.raises(ValueError, match="LlamaForSequenceClassification.*supports LlamaForCausalLM"):
        load_hf(model_copy)


def test_missing_tensor_names_it_and_its_shape(model_copy):
    _edit_weights(model_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(expected shape \(128, 64\)\)"):
        load_hf(model_copy)


def test_misshaped_tensor_names_both_shapes(model_copy):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)

    _edit_weights(model_copy, shrink)
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 64\), expected \(32, 64\)"):
        load_hf(model_copy)


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": 32}, r"tensor 'model\.embed_tokens\.weight' has shape \(320, 64\), expected \(320, 32\)"),
    ({"intermediate_size": 64}, r"tensor 'model\.layers\.0\.mlp\.\w+\.weight' has shape \(\d+, \d+\), expected \(\d+, \d+\)"),
])
def test_weights_of_another_model_name_the_file_tensor_and_shapes(model_copy, changes, message):
    _edit_config(model_copy, **changes)
    weights, config = (re.escape(str(model_copy / name)) for name in ("model.safetensors", "config.json"))
    with pytest.raises(ValueError, match=rf"^{weights}: {message} for the model that {config} describes"):
        load_hf(model_copy)


def _edit_header(file, edit):
    """Rewrite the JSON header of safetensors `file` after `edit(header)`, keeping its data."""
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])


def test_truncated_safetensors_names_the_file_and_tensor(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4000])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(weights))}: tensor '[\w.]+' \(shape \(\d+, \d+\), F32\) "
                                         r"needs bytes .* the file is truncated"):
        load_hf(model_copy)


def test_safetensors_header_disagreeing_with_its_data_names_the_file_and_tensor(model_copy):
    weights = model_copy / "model.safetensors"
    _edit_header(weights, lambda header: header["model.norm.weight"].update(shape=[128]))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(weights))}: tensor 'model\.norm\.weight' has shape \(128,\) "
                                         r"\(F32, 512 bytes\), but its data_offsets span 256 bytes; the file is corrupt"):
        load_hf(model_copy)


@pytest.mark.parametrize("file_text", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"])
def test_file_that_is_not_safetensors_is_named(model_copy, file_text):
    (model_copy / "model.safetensors").write_bytes(file_text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(model_copy / 'model.safetensors'))}: not a safetensors file"):
        load_hf(model_copy)


@pytest.mark.parametrize("change, message", [
    ("{not json", r"not valid JSON: Expecting property name"),
    ({"hidden_size": "big"}, r"hidden_size must be a positive integer, got 'big'"),
    ({"rms_norm_eps": "small"}, r"rms_norm_eps must be a number, got 'small'"),
    ({"tie_word_embeddings": "false"}, r"tie_word_embeddings must be true or false, got 'false'"),
    ({"rope_parameters": [10000.0]}, r"rope_parameters must be a mapping, got \[10000\.0\]"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "big"}}, r"rope_theta must be a number > 0, got 'big'"),
    ({"eos_token_id": "</s>"}, r"eos_token_id must be an integer, a list of integers or null, got '</s>'"),
    ({"model_type": None}, r"model_type is missing; rho_jax supports LlamaForCausalLM"),
    ({"num_key_value_heads": 3}, r"num_key_value_heads \(3\) must divide num_attention_heads \(4\)"),
])
def test_bad_config_json_names_the_file_and_field(model_copy, change, message):
    if isinstance(change, str):
        (model_copy / "config.json").write_text(change)
    else:
        _edit_config(model_copy, **change)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(model_copy / 'config.json'))}: {message}"):
        load_hf(model_copy)


def test_bad_index_names_the_file(model_copy):
    (model_copy / "model.safetensors.index.json").write_text('{"weight_map": ["model.safetensors"]}')
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json: expected a JSON object whose 'weight_map'"):
        load_hf(model_copy)


def test_unexpected_tensor_is_reported(model_copy):
    def add_bias(tensors):
        tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros((64,), np.float32)

    _edit_weights(model_copy, add_bias)
    with pytest.raises(ValueError, match=r"q_proj.bias.*attention_bias=False"):
        load_hf(model_copy)


def test_directory_without_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    (model_copy / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"No model weights in .*model.safetensors.*\.bin weights are not read"):
        load_hf(model_copy)


def test_index_pointing_to_a_missing_shard(model_copy):
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors, which is missing"):
        load_hf(model_copy)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_hf(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a rho_jax model directory"):
        load_orbax(tmp_path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
         r"Unsupported rope_type 'yarn'.*'default', 'linear', 'llama3'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, r"llama3.*needs rope_parameters \['low_freq_factor'"),
        ({"num_key_value_heads": 3}, r"num_key_value_heads \(3\) must divide num_attention_heads \(4\)"),
        ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported"),
        ({"sliding_window": 8}, r"sliding_window is a Mistral field"),
        ({"hidden_size": 0}, r"hidden_size must be a positive integer, got 0"),
        ({"model_type": "mistral", "attention_bias": True},
         r"attention_bias/mlp_bias are LlamaConfig fields; MistralForCausalLM has no biases"),
    ],
)
def test_invalid_config_fields(fields, message):
    base = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**base, **fields})


def test_lenient_where_transformers_is_lenient():
    """Fields transformers fills in or ignores are handled the same way, not rejected."""
    llama3 = ModelConfig.from_hf_dict(dict(
        model_type="llama", max_position_embeddings=4096,
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    ))
    assert llama3.rope_parameters.original_max_position_embeddings == 4096
    assert ModelConfig.from_hf_dict(dict(model_type="llama", sliding_window=128)).sliding_window is None
    both = ModelConfig.from_hf_dict(dict(
        model_type="llama", rope_scaling={"rope_type": "linear", "factor": 2.0},
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    ))
    assert both.rope_parameters == RopeParameters(rope_type="linear", rope_theta=1000.0, factor=2.0)


def test_tensor_stored_in_two_shards(model_copy):
    tensors = load_file(str(model_copy / "model.safetensors"))
    (model_copy / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:5]}, str(model_copy / "a.safetensors"))
    save_file({n: tensors[n] for n in names[4:]}, str(model_copy / "b.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor '{names[4]}' is stored twice, in a.safetensors and b.safetensors"):
        load_hf(model_copy)


def test_legacy_rope_layout_is_understood():
    cfg = ModelConfig.from_hf_dict(dict(
        model_type="llama", rope_theta=500000.0,
        rope_scaling={"type": "linear", "factor": 2.0},
    ))
    assert cfg.rope_parameters.rope_type == "linear" and cfg.rope_parameters.rope_theta == 500000.0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(dtype="int8"), "dtype must be a floating dtype"),
        (dict(param_dtype="float33"), "param_dtype: 'float33' is not a dtype name"),
        (dict(attention="flashy"),
         r"attention must be one of \('auto', 'grouped', 'xla', 'cudnn', 'blockwise', 'flash', 'splash'\)"),
    ],
)
def test_invalid_model_options(options, message):
    with pytest.raises(ValueError, match=message):
        ModelOptions(**options)
