"""Offline demo: build tiny random HF Llama/Mistral models, convert them, and print the parity error.

    python -m rho_jax.demo [--out DIR]

For every variant in `rho_jax.models.parity.TINY_VARIANTS` it (1) saves a random HF model with
`transformers`, (2) loads it with `rho_jax.models.load_hf` and compares logits with
`transformers` (fp32), (3) exports it back with `save_hf` and reloads it with `transformers`,
(4) saves and restores it as a rho_jax orbax directory. Exits non-zero if any error exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from rho_jax.models import load_hf, load_orbax, save_hf, save_orbax
from rho_jax.models.parity import (
    PARITY_TOLERANCE,
    TINY_VARIANTS,
    build_tiny_hf_model,
    hf_reference_logits,
    random_token_ids,
)


def run(out_dir: Path, batch: int = 2, seq_len: int = 32) -> list[tuple[str, float, float, float]]:
    """Rows (variant, |rho - HF|, |HF export - HF|, |orbax - rho|) of max abs logit differences."""
    rows = []
    for variant in TINY_VARIANTS:
        hf_dir = build_tiny_hf_model(out_dir / variant / "hf", variant)
        model = load_hf(hf_dir)
        ids = random_token_ids(model.config.vocab_size, batch, seq_len)
        reference = hf_reference_logits(hf_dir, ids)
        logits = np.asarray(model(ids))
        exported = save_hf(model, out_dir / variant / "hf_export", tokenizer_from=hf_dir)
        restored = load_orbax(save_orbax(model, out_dir / variant / "rho_jax", tokenizer_from=hf_dir))
        rows.append((
            variant,
            float(np.abs(logits - reference).max()),
            float(np.abs(hf_reference_logits(exported, ids) - reference).max()),
            float(np.abs(np.asarray(restored(ids)) - logits).max()),
        ))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the models here (default: a temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        rows = run(out_dir)
        header = f"{'variant':<24} {'rho_jax vs HF':>14} {'HF export':>11} {'orbax trip':>11}"
        print("Max abs logit difference (fp32, tiny random models, 2x32 tokens):")
        print(header)
        print("-" * len(header))
        for variant, parity, export, orbax in rows:
            print(f"{variant:<24} {parity:>14.2e} {export:>11.2e} {orbax:>11.2e}")
        worst = max(max(r[1:]) for r in rows)
        ok = worst <= PARITY_TOLERANCE
        print(f"\n{'PASS' if ok else 'FAIL'}: worst difference {worst:.2e} (tolerance {PARITY_TOLERANCE:.0e}).")
        if args.out:
            print(f"Models kept in {args.out} (hf/, hf_export/, rho_jax/ per variant).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
