"""Convert models between Hugging Face format and rho_jax (orbax) model directories.

    python -m rho_jax.convert to-orbax HF_DIR OUT_DIR [--param-dtype float32]
    python -m rho_jax.convert to-hf RHO_DIR OUT_DIR [--dtype bfloat16] [--max-shard-size 5GB]
    python -m rho_jax.convert to-peft LORA_DIR OUT_DIR [--base-model NAME] [--dtype float32]
    python -m rho_jax.convert merge ADAPTER_DIR BASE_DIR OUT_DIR [--dtype bfloat16]

RHO_DIR is a rho_jax model directory, a training run directory (its newest checkpoint is exported)
or one checkpoint of a run (`<run>/checkpoints/<step>`); for a LoRA run (`model.lora`) that is its
base with the adapter merged in. LORA_DIR is a rho_jax LoRA adapter directory (`lora_config.json` +
`lora.safetensors`) or a LoRA training run (its newest checkpoint's adapter) or one of its
checkpoints; `to-peft` writes it as a PEFT adapter directory. `merge` folds an adapter (PEFT,
rho_jax, or a LoRA run's) into its base model (an HF or rho_jax model directory) and writes a full
HF model.

Tokenizer files in the source directory are copied along. No network access, no torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from rho_jax.models import Llama, load_hf, load_orbax, save_hf, save_orbax
from rho_jax.models.lora import merge_lora
from rho_jax.models.lora_io import is_lora_dir, load_lora
from rho_jax.models.lora_peft import save_peft
from rho_jax.models.orbax_io import is_orbax_model_dir
from rho_jax.sharding import MeshConfig, make_mesh
from rho_jax.training.config import ModelSource
from rho_jax.training.model_sources import load_adapter, load_model, run_adapter, tokenizer_dir

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000, '500MiB' -> 524_288_000, '1024' -> 1024 bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use e.g. 5GB, 500MB, 2GiB or a byte count.")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def parse_dtype(text: str) -> str:
    allowed = ("float32", "bfloat16", "float16")
    if text not in allowed:
        raise argparse.ArgumentTypeError(f"invalid dtype {text!r}; choose one of {', '.join(allowed)}.")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="direction", required=True)
    to_orbax = sub.add_parser("to-orbax", help="HF directory -> rho_jax model directory (orbax)")
    to_orbax.add_argument("source", type=Path, help="local HF model directory (config.json + *.safetensors)")
    to_orbax.add_argument("output", type=Path, help="new or empty directory (or an earlier rho_jax model dir)")
    to_orbax.add_argument("--param-dtype", type=parse_dtype, default="float32", help="stored parameter dtype")
    to_hf = sub.add_parser("to-hf", help="rho_jax model directory or training checkpoint -> HF directory")
    to_hf.add_argument("source", type=Path, help="a `to-orbax` model directory, a training run directory "
                       "(newest checkpoint) or <run>/checkpoints/<step>")
    to_hf.add_argument("output", type=Path, help="new or empty directory (or an earlier HF export)")
    to_hf.add_argument("--dtype", type=parse_dtype, default=None, help="stored dtype (default: as in the source)")
    to_hf.add_argument("--max-shard-size", type=parse_size, default="5GB", help="split safetensors above this size")
    to_peft = sub.add_parser("to-peft", help="rho_jax LoRA adapter directory or LoRA training run -> PEFT adapter directory")
    to_peft.add_argument("source", type=Path, help="a rho_jax LoRA adapter directory (lora_config.json + lora.safetensors), "
                         "a LoRA training run (newest checkpoint) or <run>/checkpoints/<step>")
    to_peft.add_argument("output", type=Path, help="new or empty directory (or an earlier export)")
    to_peft.add_argument("--base-model", default=None, help="base_model_name_or_path recorded in adapter_config.json")
    to_peft.add_argument("--dtype", type=parse_dtype, default="float32", help="stored dtype of the adapter tensors")
    merge = sub.add_parser("merge", help="LoRA adapter + base model -> full HF model directory")
    merge.add_argument("adapter", type=Path, help="a PEFT adapter directory, a rho_jax LoRA adapter directory or a LoRA "
                       "training run (or one of its checkpoints)")
    merge.add_argument("source", type=Path, help="the base model: an HF model directory or a rho_jax model directory")
    merge.add_argument("output", type=Path, help="new or empty directory (or an earlier HF export)")
    merge.add_argument("--dtype", type=parse_dtype, default=None,
                       help="stored dtype (default: the base's, from its config.json)")
    merge.add_argument("--max-shard-size", type=parse_size, default="5GB", help="split safetensors above this size")
    return parser


def _load_base(path: Path) -> Llama:
    """An HF or rho_jax (orbax) model directory, in float32 so that a merge is computed in float32."""
    if is_orbax_model_dir(path):
        return load_orbax(path, param_dtype=jnp.float32)
    return load_hf(path)


def _stored_dtype(path: Path) -> str:
    """The parameter dtype a model directory's config.json records (`dtype` or `torch_dtype`), else float32."""
    config = json.loads((path / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def _to_peft(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        adapter = load_lora(args.source) if is_lora_dir(args.source) else run_adapter(args.source)
        save_peft(adapter, args.output, base_model_name_or_path=args.base_model, dtype=args.dtype)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.source} -> {args.output}: LoRA on {', '.join(adapter.spec.targets)}, {time.perf_counter() - start:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.direction == "to-peft":
        return _to_peft(args)
    start = time.perf_counter()
    try:
        if args.direction == "merge":
            base = _load_base(args.source)
            model = merge_lora(base, load_adapter(args.adapter, base.config))
            save_hf(model, args.output, dtype=args.dtype or _stored_dtype(args.source),
                    max_shard_bytes=args.max_shard_size, tokenizer_from=args.source)
        elif args.direction == "to-orbax":
            model = load_hf(args.source, param_dtype=jnp.dtype(args.param_dtype))
            save_orbax(model, args.output, tokenizer_from=args.source)
        else:
            if is_orbax_model_dir(args.source):  # keeps the stored dtype
                model, tokenizer_from = load_orbax(args.source), args.source
            else:  # a training run or one of its checkpoints
                source = ModelSource(init="checkpoint", path=str(args.source))
                model = load_model(source, make_mesh(MeshConfig(), jax.devices()[:1]), what="source")
                tokenizer_from = tokenizer_dir(source)
            save_hf(model, args.output, dtype=args.dtype, max_shard_bytes=args.max_shard_size,
                    tokenizer_from=tokenizer_from)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = model.config
    print(
        f"{args.source} -> {args.output}: {cfg.architecture}, {cfg.num_parameters():,} parameters, "
        f"{time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
