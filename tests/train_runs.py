"""Tiny training runs shared by the tests of the training CLI: configs, and what a run wrote."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import yaml
from flax import nnx

from rho_jax.sharding import make_mesh
from rho_jax.training.config import ModelSource
from rho_jax.training.model_sources import load_model
from rho_jax.training.run_dir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "tiny"
TOKENS_PER_STEP = 8 * 32


def model_yaml(tmp: Path, **overrides) -> str:
    fields = dict(model_type="llama", vocab_size=4096, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, tie_word_embeddings=True, **overrides)
    path = tmp / f"model-{len(list(tmp.glob('model-*')))}.yaml"
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def run_config(tmp: Path, name: str, **sections) -> Path:
    """A tiny run: 8 x 32 tokens per step, 8 steps, checkpoint every 600 tokens (steps 3, 5, 8).
    Each keyword replaces (a dict: updates) that section of the config."""
    cfg = {
        "output_dir": str(tmp / name),
        "model": {"init": "scratch", "config": model_yaml(tmp)},
        "data": {"tokenizer": str(TINY / "tokenizer"), "seq_len": 32,
                 "sources": [{"name": "web", "paths": [str(TINY / "web.jsonl")], "weight": 1},
                             {"name": "clean", "paths": [str(TINY / "clean.jsonl")], "weight": 1}]},
        "train": {"batch_size": 8, "total_steps": 8},
        "optimizer": {"learning_rate": 3e-3, "warmup_steps": 2},
        "checkpoint": {"every_tokens": 600, "keep_last": 10},
        "logging": {"every_steps": 4, "progress_bar": False, "tensorboard": False},
        "eval": {"every_tokens": 1000, "max_rows": 16, "sets": {"heldout": {"paths": [str(TINY / "heldout.jsonl")]}}},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl")}


def final_params(run: Path) -> list[np.ndarray]:
    """Every parameter array of the run's newest checkpoint."""
    model = load_model(ModelSource(init="checkpoint", path=str(run)), make_mesh())
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
