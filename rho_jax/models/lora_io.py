"""rho_jax's own adapter directory: `lora_config.json` (a `LoraSpec`) + `lora.safetensors` (stacked weights).

Tensors are named `<projection>.lora_a` / `<projection>.lora_b` (e.g. `self_attn.q_proj.lora_a`) and
stored exactly as `LoraAdapter.weights` holds them (`[layers, *in, R]`, `[layers, R, *out]`). No model
is needed to read one; `LoraAdapter.check_compatible(cfg)` checks it against a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from rho_jax.models.atomic_dir import atomic_directory
from rho_jax.models.lora import LoraAdapter, LoraSpec
from rho_jax.models.safetensors_io import SafetensorsCheckpoint

LORA_CONFIG = "lora_config.json"
LORA_WEIGHTS = "lora.safetensors"
_FORMAT = "rho_jax-lora-1"


def is_lora_dir(path: str | Path) -> bool:
    return (Path(path) / LORA_CONFIG).is_file()


def lora_config_json(spec: LoraSpec) -> str:
    """The text of a `lora_config.json` describing `spec`."""
    return json.dumps({"format": _FORMAT, **spec.to_dict()}, indent=2)


def read_lora_config(path: str | Path) -> LoraSpec:
    """The `LoraSpec` in a `lora_config.json` file; a `ValueError` naming the file if it is malformed."""
    try:
        return LoraSpec.from_dict(json.loads(Path(path).read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a rho_jax LoRA config ({err}).") from err


def save_lora(adapter: LoraAdapter, path: str | Path) -> Path:
    """Write `adapter` (float32 tensors as stored) to the directory `path`, atomically."""
    tensors = {f"{name}.{key}": np.asarray(array, np.float32)
               for name, pair in adapter.weights.items() for key, array in pair.items()}
    with atomic_directory(path) as staging:
        save_file(tensors, str(staging / LORA_WEIGHTS), metadata={"format": _FORMAT})
        (staging / LORA_CONFIG).write_text(lora_config_json(adapter.spec))
    return Path(path)


def load_lora(path: str | Path, dtype: Any = jnp.float32) -> LoraAdapter:
    """Read an adapter written by `save_lora`; a `ValueError` names what is missing or malformed."""
    path = Path(path)
    if not is_lora_dir(path):
        raise FileNotFoundError(f"{path} has no {LORA_CONFIG}; expected a rho_jax LoRA adapter directory.")
    spec = read_lora_config(path / LORA_CONFIG)
    checkpoint = SafetensorsCheckpoint(path)
    weights = {}
    for name in spec.targets:
        weights[name] = {}
        for key in ("lora_a", "lora_b"):
            if f"{name}.{key}" not in checkpoint:
                raise ValueError(f"{path / LORA_WEIGHTS}: missing tensor {name}.{key}, which {LORA_CONFIG} names.")
            weights[name][key] = jnp.asarray(checkpoint.tensor(f"{name}.{key}"), dtype)
    return LoraAdapter(spec, weights)
