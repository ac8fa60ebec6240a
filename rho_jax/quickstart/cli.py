"""Command line of the quickstart."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from rho_jax.quickstart import __doc__ as package_doc
from rho_jax.quickstart.corpus import CorpusSpec
from rho_jax.quickstart.pipeline import CLASSIFIER_KINDS, QuickstartError, Settings, run


def corpus_spec(items: list[str]) -> CorpusSpec:
    """A CorpusSpec with `field=value` changes (ints or floats, as the field's type)."""
    fields = {f.name: f for f in dataclasses.fields(CorpusSpec)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise QuickstartError(f"--corpus {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}.")
        kind = type(getattr(CorpusSpec(), name))
        try:
            changes[name] = kind(value)
        except ValueError as err:
            raise QuickstartError(f"--corpus {item!r}: {value!r} is not a {kind.__name__}.") from err
    return CorpusSpec(**changes)


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m rho_jax.quickstart", description=package_doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default=defaults.output, help="output directory (rerun to resume)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds),
                        help="one CLM and one SLM run per seed (initialization and data order)")
    parser.add_argument("--configs", default=defaults.configs, help="directory with reference.yaml and slm.yaml")
    parser.add_argument("--corpus", action="append", default=[], metavar="FIELD=VALUE",
                        help="corpus size/noise settings, fields of CorpusSpec: "
                        f"{[f.name for f in dataclasses.fields(CorpusSpec)]}")
    parser.add_argument("--embedder-override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the embedding model of the quality classifier")
    parser.add_argument("--classifier", choices=CLASSIFIER_KINDS, default=defaults.classifier,
                        help="kind of quality classifier (python -m rho_jax.curate quality train --kind)")
    parser.add_argument("--quality-threshold", type=float, default=defaults.quality_threshold,
                        help="lowest quality score the filter keeps (default: the classifier's decision score)")
    parser.add_argument("--reference-override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the reference run (as for python -m rho_jax.train)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every CLM and SLM run, e.g. train.total_steps=60")
    parser.add_argument("--probe-batches", type=int, default=defaults.probe_batches,
                        help="training-sized batches of the noisy corpus on which selection is measured")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.probe_batches < 1:
            raise QuickstartError(f"--probe-batches must be >= 1, got {args.probe_batches}.")
        if len(set(args.seeds)) != len(args.seeds):
            raise QuickstartError(f"--seeds must be distinct, got {args.seeds}.")
        settings = Settings(output=args.output, seeds=tuple(args.seeds), configs=args.configs,
                            corpus=corpus_spec(args.corpus), embedder_overrides=tuple(args.embedder_override),
                            classifier=args.classifier, quality_threshold=args.quality_threshold,
                            reference_overrides=tuple(args.reference_override),
                            overrides=tuple(args.override), probe_batches=args.probe_batches)
        run(settings)
    except (QuickstartError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
