"""Hugging Face PEFT LoRA adapter directories <-> `LoraAdapter`.

A PEFT directory holds `adapter_config.json` and `adapter_model.safetensors` with tensors
`base_model.model.<module>.lora_A.weight` `[r, in]` and `...lora_B.weight` `[out, r]`, where
`<module>` is a `transformers` module name such as `model.layers.3.self_attn.q_proj`.

Which modules are adapted follows PEFT: `target_modules` as a string is a regex that must match a
whole module name (`all-linear` means every projection but `lm_head`); as a list, a module is
adapted if its name equals an entry or ends with `.` + entry. `rank_pattern` / `alpha_pattern`
keys are regexes tried in order against a module name as `(.*\\.)?(key)$`; the first that matches
gives that module's r / lora_alpha, else `r` / `lora_alpha`. Every field rho_jax cannot honour
exactly (DoRA, `modules_to_save`, biases, layer selection, ...) is refused with its name.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from rho_jax.models.atomic_dir import atomic_directory
from rho_jax.models.config import ModelConfig
from rho_jax.models.lora import ALL_LINEAR, PROJECTIONS, LoraAdapter, LoraSpec, LoraTarget, projection_dims
from rho_jax.models.safetensors_io import SafetensorsCheckpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
# Modules of LlamaForCausalLM / MistralForCausalLM that PEFT could adapt but rho_jax adapters do not cover.
_UNSUPPORTED_MODULES = ("model.embed_tokens", "lm_head")
# Fields that describe the adapter and are read here.
_READ_FIELDS = {"peft_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora",
                "lora_dropout", "bias", "fan_in_fan_out", "use_dora", "modules_to_save", "layers_to_transform",
                "layers_pattern"}
# Fields that do not change what a saved adapter computes (bookkeeping, initialization, runtime hints).
_INERT_FIELDS = {"task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
                 "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config", "runtime_config",
                 "megatron_core", "qalora_group_size"}


def module_name(layer: int, projection: str) -> str:
    """transformers module name of `projection` (a `PROJECTIONS` key) in `layer`."""
    return f"model.layers.{layer}.{projection}"


def _is_unset(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (list, dict, str)) and not value)


def _refuse_unsupported(config: dict[str, Any], source: Path) -> None:
    """Raise a `ValueError` naming the first field of `config` whose meaning rho_jax cannot reproduce."""
    def refuse(field: str, why: str) -> None:
        raise ValueError(f"{source}: {field}={config[field]!r} is not supported by rho_jax LoRA: {why}.")

    if config.get("peft_type", "LORA") != "LORA":
        refuse("peft_type", "only LoRA adapters (peft_type LORA) are read")
    if config.get("use_dora"):
        refuse("use_dora", "DoRA's magnitude vectors are not implemented")
    if not _is_unset(config.get("modules_to_save")):
        refuse("modules_to_save", "fully trained copies of modules are not implemented")
    if config.get("bias", "none") != "none":
        refuse("bias", "only bias 'none' is supported (biases trained with the adapter are not read)")
    if not _is_unset(config.get("layers_to_transform")):
        refuse("layers_to_transform", "layer selection is not implemented; use a target_modules regex instead")
    if not _is_unset(config.get("layers_pattern")):
        refuse("layers_pattern", "layer selection is not implemented")
    if config.get("fan_in_fan_out"):
        refuse("fan_in_fan_out", "Llama/Mistral projections are nn.Linear, whose weights are not stored transposed")
    for field, value in config.items():
        if field not in _READ_FIELDS and field not in _INERT_FIELDS and not _is_unset(value):
            refuse(field, "rho_jax does not implement this PEFT option")


def _targets_module(target_modules: str | list[str], name: str) -> bool:
    if target_modules == ALL_LINEAR:
        return name not in _UNSUPPORTED_MODULES
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def _pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_peft_config(path: str | Path, cfg: ModelConfig) -> LoraSpec:
    """The `LoraSpec` that the PEFT `adapter_config.json` in directory `path` describes for `cfg`'s model.

    Raises `FileNotFoundError` without the file, and a `ValueError` naming the file and the field for
    an unsupported option or when `target_modules` selects no projection of the model.
    """
    source = Path(path) / ADAPTER_CONFIG
    if not source.exists():
        raise FileNotFoundError(f"{path} has no {ADAPTER_CONFIG}; expected a PEFT adapter directory.")
    try:
        config = json.loads(source.read_text())
    except ValueError as err:
        raise ValueError(f"{source}: not valid JSON ({err}).") from err
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object.")
    _refuse_unsupported(config, source)
    target_modules = config.get("target_modules")
    if not isinstance(target_modules, (str, list)) or not target_modules:
        raise ValueError(f"{source}: target_modules must be a module name list or a regex, got {target_modules!r}.")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    unsupported = [m for m in _UNSUPPORTED_MODULES if _targets_module(target_modules, m)]
    if unsupported:
        raise ValueError(f"{source}: target_modules={target_modules!r} selects {unsupported}; rho_jax adapters cover "
                         f"only the attention and MLP projections ({', '.join(p.split('.')[1] for p in PROJECTIONS)}).")
    targets = {}
    for projection in PROJECTIONS:
        names = [module_name(i, projection) for i in range(cfg.num_hidden_layers)]
        ranks = tuple(int(_pattern_value(rank_pattern, n, r)) if _targets_module(target_modules, n) else 0 for n in names)
        if any(ranks):
            alphas = tuple(float(_pattern_value(alpha_pattern, n, alpha)) for n in names)
            targets[projection] = LoraTarget(ranks, alphas)
    if not targets:
        raise ValueError(f"{source}: target_modules={target_modules!r} matches no module of this {cfg.architecture} "
                         f"(its {cfg.num_hidden_layers} layers have modules named like {module_name(0, 'self_attn.q_proj')}).")
    dropout = float(config.get("lora_dropout") or 0.0)
    return LoraSpec(targets, use_rslora=bool(config.get("use_rslora", False)), dropout=dropout)


def load_peft(path: str | Path, cfg: ModelConfig, dtype: Any = jnp.float32) -> LoraAdapter:
    """Read the PEFT LoRA adapter directory `path` for a model of config `cfg` (weights cast to `dtype`).

    Raises a `ValueError` naming the tensor when the weights do not fit `cfg` (an adapter made for
    another architecture or size), are missing, or include tensors rho_jax does not read.
    """
    path = Path(path)
    spec = read_peft_config(path, cfg)
    if not (path / ADAPTER_WEIGHTS).exists():
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(f"{path} has no {ADAPTER_WEIGHTS} (found: {present}); PEFT .bin adapters are not "
                                "read, re-save with save_pretrained(dir, safe_serialization=True).")
    checkpoint = SafetensorsCheckpoint(path)
    expected: set[str] = set()
    weights = {}
    for projection, target in spec.targets.items():
        in_dims, out_dims = projection_dims(cfg, projection)
        n_in, n_out = int(np.prod(in_dims)), int(np.prod(out_dims))
        a = np.zeros((cfg.num_hidden_layers, n_in, target.max_rank), np.float32)
        b = np.zeros((cfg.num_hidden_layers, target.max_rank, n_out), np.float32)
        for layer, rank in enumerate(target.ranks):
            if rank == 0:
                continue
            for key, shape, out in (("lora_A", (rank, n_in), a), ("lora_B", (n_out, rank), b)):
                name = f"{_PREFIX}{module_name(layer, projection)}.{key}.weight"
                expected.add(name)
                if name not in checkpoint:
                    raise ValueError(f"{path}: missing tensor {name!r}, which {ADAPTER_CONFIG} implies (shape {shape}).")
                if checkpoint.shape(name) != shape:
                    raise ValueError(
                        f"{path}: tensor {name!r} has shape {checkpoint.shape(name)}, expected {shape} for r={rank} on this "
                        f"{cfg.architecture} (hidden_size={cfg.hidden_size}, intermediate_size={cfg.intermediate_size}, "
                        f"heads={cfg.num_attention_heads}/{cfg.num_key_value_heads}); the adapter was made for another model."
                    )
                tensor = checkpoint.tensor(name).astype(np.float32)
                if key == "lora_A":
                    out[layer, :, :rank] = tensor.T
                else:
                    out[layer, :rank, :] = tensor.T
        weights[projection] = {
            "lora_a": jnp.asarray(a.reshape(cfg.num_hidden_layers, *in_dims, target.max_rank), dtype),
            "lora_b": jnp.asarray(b.reshape(cfg.num_hidden_layers, target.max_rank, *out_dims), dtype),
        }
    unexpected = sorted(checkpoint.names() - expected)
    if unexpected:
        raise ValueError(
            f"{path}: tensors {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} are not LoRA weights of the modules "
            f"{ADAPTER_CONFIG} selects on this {cfg.architecture} with {cfg.num_hidden_layers} layers; the adapter was made "
            "for another model or uses features rho_jax does not read."
        )
    return LoraAdapter(spec, weights)


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _patterns(per_module: dict[str, tuple[Any, ...]], default: Any) -> dict[str, Any]:
    """PEFT pattern entries giving every (projection, layer) its value: a short name when uniform over layers."""
    patterns: dict[str, Any] = {}
    for projection, values in per_module.items():
        present = [v for v in values if v is not None]
        if len(set(present)) == 1 and len(present) == len(values):
            if present[0] != default:
                patterns[projection.split(".")[1]] = present[0]
            continue
        for layer, value in enumerate(values):
            if value is not None and value != default:
                patterns[module_name(layer, projection)] = value
    return patterns


def peft_config_dict(spec: LoraSpec, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The `adapter_config.json` content that makes PEFT build exactly `spec`'s modules, ranks and alphas."""
    targets = spec.targets
    ranks = {p: tuple(r if r else None for r in t.ranks) for p, t in targets.items()}
    alphas = {p: tuple(_number(a) if r else None for r, a in zip(t.ranks, t.alphas)) for p, t in targets.items()}
    r = _most_common([v for values in ranks.values() for v in values if v is not None])
    alpha = _most_common([v for values in alphas.values() for v in values if v is not None])
    target_modules = []
    for projection, target in targets.items():
        if all(target.ranks):
            target_modules.append(projection.split(".")[1])
        else:
            target_modules += [module_name(i, projection) for i, rank in enumerate(target.ranks) if rank]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "target_modules": target_modules,
        "rank_pattern": _patterns(ranks, r),
        "alpha_pattern": _patterns(alphas, alpha),
        "use_rslora": spec.use_rslora,
        "lora_dropout": spec.dropout,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def save_peft(adapter: LoraAdapter, path: str | Path, base_model_name_or_path: str | None = None,
              dtype: Any = "float32") -> Path:
    """Write `adapter` as a PEFT directory that `peft.PeftModel.from_pretrained(base, path)` loads.

    Tensors are stored in `dtype` and trimmed to each layer's rank; layers of rank 0 get none. The
    directory is written beside `path` and moved into place when complete (see `atomic_directory`).
    """
    np_dtype = np.dtype(jnp.dtype(dtype))
    tensors = {}
    for projection, target in adapter.spec.targets.items():
        a = np.asarray(adapter.weights[projection]["lora_a"], np.float32)
        b = np.asarray(adapter.weights[projection]["lora_b"], np.float32)
        layers, max_rank = a.shape[0], a.shape[-1]
        a, b = a.reshape(layers, -1, max_rank), b.reshape(layers, max_rank, -1)
        for layer, rank in enumerate(target.ranks):
            if rank:
                name = f"{_PREFIX}{module_name(layer, projection)}"
                tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[layer, :, :rank].T).astype(np_dtype)
                tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[layer, :rank, :].T).astype(np_dtype)
    with atomic_directory(path) as staging:
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = peft_config_dict(adapter.spec, base_model_name_or_path)
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return Path(path)
