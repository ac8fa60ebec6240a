"""LoRA adapters in the PEFT format: rho_jax logits (merged and unmerged) equal `peft.PeftModel`'s.

Adapters are made with `peft` on tiny random Llama/Mistral models, with lora_A and lora_B both
re-drawn ~ 0.5 * N(0, 1/fan_in) (PEFT starts lora_B at zero, which would make every adapter a no-op):
each adapter moves the logits by O(1) (checked), so a wrong layout, scale, rank or pattern shows far
above the 1e-4 tolerance, while fp32 rounding stays near 1e-5. (Much stronger adapters make even
peft's own merged and unmerged logits differ by ~5e-5 on these models.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rho_jax.convert import main as convert_main
from rho_jax.models import ModelOptions, load_hf
from rho_jax.models.lora import (
    PROJECTIONS,
    LoraAdapter,
    LoraLinear,
    LoraSpec,
    init_lora,
    lora_from_model,
    merge_lora,
    set_lora_dropout,
    with_lora,
    without_lora,
)
from rho_jax.models.lora_io import load_lora, save_lora
from rho_jax.models.lora_peft import ADAPTER_CONFIG, load_peft, read_peft_config, save_peft
from rho_jax.models.parity import PARITY_TOLERANCE, hf_reference_logits, random_token_ids

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft", reason="peft is the reference for LoRA parity (test extra)")


def _hf_model(base_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, attn_implementation="eager")


def make_peft_adapter(base_dir: Path, out_dir: Path, seed: int = 0, **config) -> Path:
    """Save a PEFT LoRA adapter of `config` on the model in `base_dir`, all of its weights random."""
    model = peft.get_peft_model(_hf_model(base_dir), peft.LoraConfig(**config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    model.save_pretrained(str(out_dir))
    return out_dir


def peft_logits(base_dir: Path, adapter_dir: Path, ids: np.ndarray) -> np.ndarray:
    """float32 logits of `PeftModel.from_pretrained(base, adapter)`, loaded from disk."""
    model = peft.PeftModel.from_pretrained(_hf_model(base_dir), str(adapter_dir))
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


def _max_error(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


PARITY_CASES = {
    "llama-list": ("llama-gqa", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "mistral-all-linear": ("mistral-sliding-window", dict(r=4, lora_alpha=16, target_modules="all-linear")),
    "llama-patterns": ("llama-gqa", dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"],
        rank_pattern={"o_proj": 2, "model.layers.1.self_attn.q_proj": 6},
        alpha_pattern={"down_proj": 3, "layers.2.mlp.up_proj": 10},
    )),
    "mistral-rslora-regex": ("mistral-sliding-window", dict(
        r=8, lora_alpha=4, use_rslora=True, target_modules=r".*\.(q_proj|v_proj|gate_proj)",
        rank_pattern={"v_proj": 2}, alpha_pattern={"gate_proj": 12},
    )),
    "llama-bias-one-layer": ("llama-linear-rope-bias", dict(
        r=3, lora_alpha=5, target_modules=r"model\.layers\.0\.self_attn\.(q|o)_proj",
    )),
}


@pytest.fixture(scope="module")
def peft_case(tiny_hf_dir, tmp_path_factory):
    """`peft_case(name)` -> (base_dir, adapter_dir, ids, PeftModel logits), built once per module."""
    built = {}

    def get(name: str):
        if name not in built:
            variant, config = PARITY_CASES[name]
            base_dir = tiny_hf_dir(variant)
            adapter_dir = make_peft_adapter(base_dir, tmp_path_factory.mktemp(name) / "adapter", seed=1, **config)
            ids = random_token_ids(320, batch=2, seq_len=24, seed=2)
            built[name] = base_dir, adapter_dir, ids, peft_logits(base_dir, adapter_dir, ids)
        return built[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_merged_and_unmerged_logits_match_peft(peft_case, case):
    base_dir, adapter_dir, ids, reference = peft_case(case)
    model = load_hf(base_dir)
    base_logits = np.asarray(model(ids))
    assert _max_error(base_logits, reference) > 100 * PARITY_TOLERANCE  # the adapter matters
    adapter = load_peft(adapter_dir, model.config)
    merged = merge_lora(model, adapter)
    unmerged = with_lora(model, adapter)
    assert _max_error(merged(ids), reference) < PARITY_TOLERANCE
    assert _max_error(unmerged(ids), reference) < PARITY_TOLERANCE
    assert _max_error(model(ids), base_logits) == 0.0  # the base model is left as it was
    assert _max_error(without_lora(unmerged)(ids), base_logits) == 0.0
    unrolled = load_hf(base_dir, options=ModelOptions(scan_layers=False, remat="full"))
    assert _max_error(with_lora(unrolled, adapter)(ids), reference) < PARITY_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_peft_round_trip_through_rho_jax(peft_case, case, tmp_path):
    """peft -> rho_jax -> peft: the export loads in peft with the same logits and the same tensors."""
    base_dir, adapter_dir, ids, reference = peft_case(case)
    cfg = load_hf(base_dir).config
    adapter = load_peft(adapter_dir, cfg)
    exported = save_peft(adapter, tmp_path / "exported")
    assert _max_error(peft_logits(base_dir, exported, ids), reference) < PARITY_TOLERANCE
    again = load_peft(exported, cfg)
    assert again.spec == adapter.spec
    for name, pair in adapter.weights.items():
        for key, array in pair.items():
            np.testing.assert_array_equal(np.asarray(again.weights[name][key]), np.asarray(array))
    from safetensors.numpy import load_file

    original, written = load_file(adapter_dir / "adapter_model.safetensors"), load_file(exported / "adapter_model.safetensors")
    assert sorted(original) == sorted(written)
    for name, tensor in original.items():
        np.testing.assert_array_equal(written[name], tensor)


def _trained_like_adapter(cfg, spec: LoraSpec, seed: int) -> LoraAdapter:
    """A rho_jax-made adapter with non-zero lora_b, standing in for one trained in rho_jax."""
    adapter = init_lora(cfg, spec, seed=seed)
    key = jax.random.key(seed + 1)
    weights = {}
    for name, pair in adapter.weights.items():
        key, sub = jax.random.split(key)
        weights[name] = {"lora_a": pair["lora_a"], "lora_b": 0.3 * jax.random.normal(sub, pair["lora_b"].shape)}
    return LoraAdapter(spec, weights)


@pytest.mark.slow
def test_rho_jax_adapter_exports_to_peft_and_merges(tiny_hf_dir, tmp_path):
    """rho_jax adapter dir -> `convert to-peft` -> PeftModel logits = rho_jax; `convert merge` (either adapter
    format, HF or rho_jax base) -> HF model, same logits."""
    base_dir = tiny_hf_dir("llama-gqa")
    model = load_hf(base_dir)
    spec = LoraSpec.uniform(model.config, r=4, alpha=6, target_modules=["q_proj", "o_proj", "mlp.up_proj"], use_rslora=True)
    wrapped = with_lora(model, _trained_like_adapter(model.config, spec, seed=3))
    adapter = lora_from_model(wrapped, spec)
    ids = random_token_ids(320, batch=2, seq_len=24, seed=4)
    ours = np.asarray(wrapped(ids))
    assert _max_error(ours, model(ids)) > 100 * PARITY_TOLERANCE
    save_lora(adapter, tmp_path / "rho_lora")
    reloaded = load_lora(tmp_path / "rho_lora")
    assert reloaded.spec == spec

    assert convert_main(["to-peft", str(tmp_path / "rho_lora"), str(tmp_path / "peft"), "--base-model", "tiny"]) == 0
    config = json.loads((tmp_path / "peft" / ADAPTER_CONFIG).read_text())
    assert config["use_rslora"] is True and sorted(config["target_modules"]) == ["o_proj", "q_proj", "up_proj"]
    assert _max_error(peft_logits(base_dir, tmp_path / "peft", ids), ours) < PARITY_TOLERANCE

    assert convert_main(["to-orbax", str(base_dir), str(tmp_path / "base-rho")]) == 0
    for adapter_dir, base in (("peft", base_dir), ("rho_lora", base_dir), ("peft", tmp_path / "base-rho")):
        out = tmp_path / f"merged-{adapter_dir}-{base.name}"
        assert convert_main(["merge", str(tmp_path / adapter_dir), str(base), str(out)]) == 0
        assert _max_error(hf_reference_logits(out, ids), ours) < PARITY_TOLERANCE
        assert (out / "tokenizer.json").exists()


@pytest.mark.slow
def test_unmerged_model_trains_only_adapter_params(tiny_hf_dir):
    """`with_lora` puts the adapters in the module tree: their params are reachable apart from the base."""
    from flax import nnx

    model = load_hf(tiny_hf_dir("llama-gqa"))
    spec = LoraSpec.uniform(model.config, r=2, alpha=2, target_modules=["v_proj"])
    wrapped = with_lora(model, init_lora(model.config, spec))
    assert isinstance(wrapped.layers.self_attn.v_proj, LoraLinear)
    lora_params = nnx.state(wrapped, nnx.All(nnx.Param, nnx.PathContains("v_proj"), nnx.Not(nnx.PathContains("base"))))
    shapes = sorted(tuple(v[...].shape) for _, v in nnx.to_flat_state(lora_params))
    assert shapes == [(3, 2, 2, 16), (3, 64, 2)]
    ids = random_token_ids(320, batch=1, seq_len=8, seed=0)
    assert _max_error(wrapped(ids), model(ids)) == 0.0  # lora_b starts at zero, as in PEFT

    is_lora = nnx.All(nnx.Param, nnx.PathContains("v_proj"), nnx.Not(nnx.PathContains("base")))
    graphdef, trainable, frozen = nnx.split(wrapped, is_lora, ...)
    loss = lambda params: nnx.merge(graphdef, params, frozen)(ids).mean()
    grads = dict(nnx.to_flat_state(jax.grad(loss)(trainable)))
    assert sorted("/".join(map(str, path)) for path in grads) == [
        "layers/self_attn/v_proj/lora_a", "layers/self_attn/v_proj/lora_b"]
    assert float(jnp.abs(grads[("layers", "self_attn", "v_proj", "lora_b")][...]).max()) > 0.0


@pytest.mark.slow
def test_lora_dropout_only_while_keys_are_set(tiny_hf_dir):
    from flax import nnx

    model = load_hf(tiny_hf_dir("llama-gqa"))
    spec = LoraSpec.uniform(model.config, r=4, alpha=8, target_modules=["q_proj", "down_proj"], dropout=0.5)
    adapter = _trained_like_adapter(model.config, spec, seed=5)
    wrapped = with_lora(model, adapter)
    ids = random_token_ids(320, batch=2, seq_len=16, seed=6)
    plain = np.asarray(wrapped(ids))
    assert _max_error(plain, merge_lora(model, adapter)(ids)) < PARITY_TOLERANCE  # off unless keys are given
    set_lora_dropout(wrapped, jax.random.key(0))
    first = np.asarray(wrapped(ids))
    assert _max_error(wrapped(ids), first) == 0.0 and _max_error(first, plain) > 100 * PARITY_TOLERANCE
    set_lora_dropout(wrapped, jax.random.key(1))
    assert _max_error(wrapped(ids), first) > 100 * PARITY_TOLERANCE
    set_lora_dropout(wrapped, None)
    assert _max_error(wrapped(ids), plain) == 0.0

    # One layer's projection against the formula: x @ W + scale * ((x * keep / (1 - p)) @ a) @ b.
    set_lora_dropout(wrapped, jax.random.key(2))
    down = wrapped.layers.mlp.down_proj
    graphdef, state = nnx.split(down)
    layer0 = nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf[0], state))
    x = jax.random.normal(jax.random.key(3), (2, 5, model.config.intermediate_size))
    keep = jax.random.bernoulli(jax.random.wrap_key_data(down.dropout_key[...][0]), 0.5, x.shape)
    assert 0.4 < float(keep.mean()) < 0.6
    a, b = adapter.weights["mlp.down_proj"]["lora_a"][0], adapter.weights["mlp.down_proj"]["lora_b"][0]
    expected = x @ down.base.kernel[...][0] + spec.scales("mlp.down_proj")[0] * ((x * keep / 0.5) @ a) @ b
    np.testing.assert_allclose(np.asarray(layer0(x)), np.asarray(expected), atol=1e-4, rtol=1e-5)


# ---- bad input --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simple_adapter(tiny_hf_dir, tmp_path_factory):
    base_dir = tiny_hf_dir("llama-gqa")
    return base_dir, make_peft_adapter(base_dir, tmp_path_factory.mktemp("simple") / "adapter",
                                       r=2, lora_alpha=4, target_modules=["q_proj"])


def _edited(adapter_dir: Path, tmp_path: Path, **edit) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(adapter_dir, copy)
    config = json.loads((copy / ADAPTER_CONFIG).read_text())
    config.update(edit)
    (copy / ADAPTER_CONFIG).write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("edit, field", [
    ({"use_dora": True}, "use_dora"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias"),
    ({"bias": "lora_only"}, "bias"),
    ({"layers_to_transform": [0]}, "layers_to_transform"),
    ({"layers_pattern": "layers"}, "layers_pattern"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ({"lora_bias": True}, "lora_bias"),
    ({"exclude_modules": ["v_proj"]}, "exclude_modules"),
    ({"peft_type": "IA3"}, "peft_type"),
])
def test_unsupported_fields_are_refused_by_name(simple_adapter, tmp_path, edit, field):
    base_dir, adapter_dir = simple_adapter
    cfg = load_hf(base_dir).config
    with pytest.raises(ValueError, match=rf"{field}=.*not supported"):
        load_peft(_edited(adapter_dir, tmp_path, **edit), cfg)


@pytest.mark.parametrize("target_modules, message", [
    (["c_attn", "c_proj"], "matches no module"),
    (r"transformer\.h\.\d+\.attn", "matches no module"),
    (["q_proj", "lm_head"], "selects \\['lm_head'\\]"),
    (["embed_tokens"], "selects \\['model.embed_tokens'\\]"),
])
def test_target_modules_must_select_projections(simple_adapter, tmp_path, target_modules, message):
    base_dir, adapter_dir = simple_adapter
    with pytest.raises(ValueError, match=message):
        load_peft(_edited(adapter_dir, tmp_path, target_modules=target_modules), load_hf(base_dir).config)


def test_all_linear_and_regex_target_modules(simple_adapter, tmp_path):
    """peft saves `all-linear` expanded to a list; a hand-written config may keep the string."""
    base_dir, adapter_dir = simple_adapter
    cfg = load_hf(base_dir).config
    spec = read_peft_config(_edited(adapter_dir, tmp_path / "a", target_modules="all-linear"), cfg)
    assert set(spec.targets) == set(PROJECTIONS) and all(t.ranks == (2, 2, 2) for t in spec.targets.values())
    spec = read_peft_config(_edited(adapter_dir, tmp_path / "b", target_modules=r".*layers\.[02]\.mlp\.(up|down)_proj",
                                    rank_pattern={"layers.2.mlp.down_proj": 5}), cfg)
    assert {k: t.ranks for k, t in spec.targets.items()} == {"mlp.up_proj": (2, 0, 2), "mlp.down_proj": (2, 0, 5)}


def test_adapter_for_another_model_is_refused(simple_adapter, tiny_hf_dir, tmp_path):
    base_dir, adapter_dir = simple_adapter
    mistral = load_hf(tiny_hf_dir("mistral-sliding-window")).config  # other head_dim, 2 layers instead of 3
    with pytest.raises(ValueError, match=r"has shape \(64, 2\), expected \(128, 2\).*made for another model"):
        load_peft(adapter_dir, mistral)
    smaller = make_peft_adapter(tiny_hf_dir("mistral-sliding-window"), tmp_path / "m", r=2, target_modules=["v_proj"])
    with pytest.raises(ValueError, match=r"missing tensor .*layers\.2\.self_attn\.v_proj\.lora_A"):
        load_peft(smaller, load_hf(base_dir).config)
    out = tmp_path / "merged"
    assert convert_main(["merge", str(smaller), str(base_dir), str(out)]) == 2
    assert not out.exists()


def test_missing_or_foreign_tensors_are_refused(simple_adapter, tmp_path):
    base_dir, adapter_dir = simple_adapter
    cfg = load_hf(base_dir).config
    copy = tmp_path / "copy"
    shutil.copytree(adapter_dir, copy)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(copy / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = np.ones(64, np.float32)
    save_file(tensors, str(copy / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="lora_magnitude_vector"):
        load_peft(copy, cfg)
    (copy / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_peft(copy, cfg)
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG):
        load_peft(tmp_path, cfg)


def test_adapter_shape_check_and_spec_validation(tiny_hf_dir):
    llama = load_hf(tiny_hf_dir("llama-gqa")).config
    mistral = load_hf(tiny_hf_dir("mistral-sliding-window")).config
    adapter = init_lora(llama, LoraSpec.uniform(llama, r=2, alpha=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="made for a different model"):
        adapter.check_compatible(mistral)
    with pytest.raises(ValueError, match="names no projection"):
        LoraSpec.uniform(llama, r=2, alpha=2, target_modules=["lm_head"])
    with pytest.raises(ValueError, match="rank r must be >= 1"):
        LoraSpec.uniform(llama, r=0, alpha=2, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="dropout"):
        LoraSpec.uniform(llama, r=2, alpha=2, target_modules=["q_proj"], dropout=1.0)
    assert jnp.asarray(LoraSpec.uniform(llama, r=4, alpha=8, target_modules=["q_proj"], use_rslora=True)
                       .scales("self_attn.q_proj")).tolist() == [4.0, 4.0, 4.0]
