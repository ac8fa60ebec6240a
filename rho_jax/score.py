"""Score a prepared corpus with the reference model once, for any number of SLM runs.

    python -m rho_jax.score --config configs/X-score.yaml [key.sub=value ...]

For every packed row of a prepared directory (`python -m rho_jax.data.prepare`), the reference's
per-token cross-entropy `ref_loss` and predictive entropy `ref_entropy` are written beside it
(`rho_jax.data.scores`). A training run with `reference: {init: precomputed}` and the source's
`scores` set reads them with its batches and runs no reference forward.

Global batches of `batch_size` rows are sharded over the whole mesh (every device of every process,
as in training); each process reads only its rows. A shard's scores are written when the shard is
done (atomically), so rerunning the same command after an interruption continues with the first
unfinished shard; a finished output is left as it is.

The scoring run itself is `rho_jax.training.scoring.score`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rho_jax.training.cluster import ClusterError, add_cluster_arguments, detect_cluster, initialize
from rho_jax.training.config import ConfigError, load_config
from rho_jax.training.scoring import ScoreConfig, score

__all__ = ["ScoreConfig", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML scoring configuration (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override any config field")
    add_cluster_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        initialize(detect_cluster(args))
        score(load_config(args.config, args.overrides, cls=ScoreConfig))
    except (ClusterError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
