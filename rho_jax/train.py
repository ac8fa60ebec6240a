"""Train a reference model (CLM) or an SLM model.

    python -m rho_jax.train --config configs/X.yaml [key.sub=value ...]

Everything that can be wrong with the config, the data, the models or the output directory is
checked before anything is compiled (exit code 2). Rerunning the same command resumes from the
newest complete checkpoint. SIGTERM (preemption) or Ctrl-C saves a checkpoint after the current
step and exits with code 75 (rerun to resume). A NaN/Inf loss stops the run without saving (exit
code 1); the last good checkpoint stays as it was.

On several processes (hosts) every process runs this same command; the cluster is detected from
SLURM or the TPU VM, or given with --coordinator_address/--num_processes/--process_id
(`rho_jax.training.cluster`). The run itself is `rho_jax.training.trainer.Trainer`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rho_jax.training.checkpoint_errors import CheckpointRestoreFailed, CheckpointSaveFailed, UnreadableCheckpoint
from rho_jax.training.cluster import ClusterError, add_cluster_arguments, detect_cluster, initialize
from rho_jax.training.config import ConfigError, RunConfig, load_config
from rho_jax.training.run_lock import RunLocked, lock_run_dir
from rho_jax.training.run_log import quiet_background_errors
from rho_jax.training.trainer import STOPPED, Trainer, TrainingDiverged

__all__ = ["STOPPED", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML run configuration (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override any config field, e.g. train.total_steps=100 slm.ratio=0.7")
    parser.add_argument("--force-unlock", action="store_true",
                        help="take over the run directory's lock from a trainer that is known to be gone "
                             "(e.g. its host died); never use it while that trainer may still run")
    add_cluster_arguments(parser)
    return parser


def train(cfg: RunConfig) -> int:
    """Set up and run; the exit code (bad input 2, a run that cannot go on 1)."""
    try:
        trainer = Trainer.setup(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (UnreadableCheckpoint, CheckpointRestoreFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        return trainer.run()
    except (TrainingDiverged, CheckpointSaveFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    quiet_background_errors()
    try:
        initialize(detect_cluster(args))
        cfg = load_config(args.config, args.overrides)
        lock = lock_run_dir(cfg.output_dir, force=args.force_unlock)
    except (ClusterError, ConfigError, FileNotFoundError, ValueError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return train(cfg)
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
