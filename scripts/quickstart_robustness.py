"""Does the quickstart's SLM-over-CLM margin survive another machine? Seeds x numerics variants.

    python scripts/quickstart_robustness.py [--output runs/robustness] [--seeds 0 1 2 3 4]
                                            [--variants grouped xla-chunked] [--override KEY=VALUE ...]
                                            [--corpus FIELD=VALUE ...]

Another CPU rounds floating point differently; near-ties at the top-k threshold then flip and the
runs diverge. This script changes the rounding the same way, without changing the method: each
variant runs the whole quickstart (its own embedding model, curated reference data, reference, CLM
and SLM per seed) with other numerics, then one table shows every (seed, variant) cell: SLM - CLM
held-out loss at equal tokens and the share of the tokens SLM needed to reach CLM's final loss.
Written to `<output>/robustness.md` and `.json`; each variant's full quickstart report stays in
`<output>/<variant>/`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from rho_jax.quickstart.cli import corpus_spec
from rho_jax.quickstart.pipeline import Settings, run

# Variants of the numerics (each a set of config overrides for every model of the quickstart).
VARIANTS = {
    "grouped": (),  # the CPU default: head-major grouped attention, cross-entropy in one piece
    "xla-chunked": ("model.options.attention=xla", "slm.ce_chunk_size=64"),  # XLA's attention, CE in 64-token chunks
}
TARGETS = {"mean_gap": -0.15, "mean_token_fraction": 0.75}


def cell(seed: dict[str, Any]) -> str:
    fraction = seed["slm_fraction_of_tokens"]
    return f"{seed['slm_minus_clm']:+.3f} ({'not reached' if fraction is None else f'{fraction:.0%}'})"


def summarize(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every cell's gap and token fraction (a CLM loss SLM never reached counts as 100%), and their statistics."""
    gaps = [s["slm_minus_clm"] for report in reports.values() for s in report["seeds"]]
    fractions = [s["slm_fraction_of_tokens"] or 1.0 for report in reports.values() for s in report["seeds"]]
    return {
        "cells": len(gaps), "slm_wins": sum(g < 0 for g in gaps),
        "gap": {"mean": statistics.fmean(gaps), "std": statistics.stdev(gaps), "min": min(gaps), "max": max(gaps)},
        "token_fraction": {"mean": statistics.fmean(fractions), "min": min(fractions), "max": max(fractions)},
    }


def markdown(reports: dict[str, dict[str, Any]], stats: dict[str, Any], overrides: list[str]) -> str:
    variants = list(reports)
    seeds = [s["seed"] for s in reports[variants[0]]["seeds"]]
    lines = [
        "| seed | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
        *(f"| {seed} | " + " | ".join(cell(reports[v]["seeds"][i]) for v in variants) + " |"
          for i, seed in enumerate(seeds)),
        "",
        "Cells: SLM - CLM final held-out loss (nats; negative = SLM better) and, in parentheses, the share of the "
        "tokens SLM needed to reach CLM's final held-out loss. Variants: "
        + "; ".join(f"`{v}` = {', '.join(VARIANTS[v]) or 'the defaults'}" for v in variants)
        + (f"; settings besides the quickstart's: {', '.join(overrides)}" if overrides else "") + ".",
        "",
        f"SLM won {stats['slm_wins']} of {stats['cells']} cells; gap {stats['gap']['mean']:+.3f} +- "
        f"{stats['gap']['std']:.3f} nats (range {stats['gap']['min']:+.3f} to {stats['gap']['max']:+.3f}); tokens "
        f"SLM needed: {stats['token_fraction']['mean']:.0%} on average (range {stats['token_fraction']['min']:.0%} "
        f"to {stats['token_fraction']['max']:.0%}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/robustness")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every CLM and SLM run (to try other settings)")
    parser.add_argument("--configs", default=Settings.configs, help="directory with reference.yaml and slm.yaml")
    parser.add_argument("--corpus", action="append", default=[], metavar="FIELD=VALUE",
                        help="corpus setting (a field of CorpusSpec), as for python -m rho_jax.quickstart")
    args = parser.parse_args(argv)
    out = Path(args.output)
    reports = {}
    for variant in args.variants:
        numerics = VARIANTS[variant]
        # The embedding model and the reference are plain CLM: an slm section given to them must keep ratio 1.0.
        reference = (*numerics, "slm.ratio=1.0") if any(o.startswith("slm.") for o in numerics) else numerics
        settings = Settings(output=str(out / variant), seeds=tuple(args.seeds), configs=args.configs,
                            corpus=corpus_spec(args.corpus), embedder_overrides=reference, reference_overrides=reference,
                            overrides=(*numerics, *args.override))
        reports[variant] = run(settings)
    stats = summarize(reports)
    text = markdown(reports, stats, [*args.override, *(f"corpus {c}" for c in args.corpus)])
    (out / "robustness.md").write_text(text)
    (out / "robustness.json").write_text(json.dumps({"stats": stats, "targets": TARGETS, "reports": reports}, indent=2))
    print(text)
    met = (stats["slm_wins"] == stats["cells"] and stats["gap"]["mean"] <= TARGETS["mean_gap"]
           and stats["token_fraction"]["mean"] <= TARGETS["mean_token_fraction"])
    print(f"targets (SLM wins every cell, mean gap <= {TARGETS['mean_gap']}, tokens <= "
          f"{TARGETS['mean_token_fraction']:.0%}): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
