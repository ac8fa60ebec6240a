"""Analyze token selection: loss dynamics, a selection page, selected vs unselected loss curves.

    python -m rho_jax.analyze dynamics  --run RUN --data HELDOUT --output DIR [--threshold X]
    python -m rho_jax.analyze selection --model CKPT --reference REF --text FILE --output page.html
    python -m rho_jax.analyze curves    --run RUN [--run RUN2 ...] --output curves.png [--eval]

See `rho_jax.analysis` for what each computes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from rho_jax.analysis import dynamics, eval_curves, loss_curves, selection_page
from rho_jax.analysis.models import load, model_tokenizer, run_checkpoints, valid_token_losses
from rho_jax.data import SourceConfig, eval_batches, load_tokenizer
from rho_jax.sharding import make_mesh
from rho_jax.slm import SLMConfig
from rho_jax.training.checkpoint import CHECKPOINTS_DIR
from rho_jax.training.run_dir import CONFIG_FILE


def run_seq_len(run: str | Path) -> int | None:
    """data.seq_len of a training run (or of the run a checkpoint directory belongs to), else None."""
    run = Path(run)
    if run.parent.name == CHECKPOINTS_DIR:
        run = run.parent.parent
    config = Path(run) / CONFIG_FILE
    return yaml.safe_load(config.read_text())["data"]["seq_len"] if config.is_file() else None


def cmd_dynamics(args: argparse.Namespace) -> None:
    checkpoints = run_checkpoints(args.run)
    if args.steps:
        wanted = set(args.steps)
        checkpoints = [(s, d) for s, d in checkpoints if s in wanted]
    tokenizer = load_tokenizer(args.tokenizer or model_tokenizer(args.run))
    seq_len = args.seq_len or run_seq_len(args.run)
    batches = eval_batches(SourceConfig(paths=tuple(args.data)), tokenizer, seq_len=seq_len,
                           global_batch_rows=args.batch_size, max_rows=args.max_rows)
    losses, mesh = [], make_mesh()
    for step, directory in checkpoints:
        print(f"scoring the held-out tokens with the checkpoint at step {step}", file=sys.stderr)
        losses.append(valid_token_losses(*load(directory, mesh), batches, mesh))
    summary = dynamics.write_report(dynamics.Dynamics.of([s for s, _ in checkpoints], losses, args.threshold),
                                    Path(args.output))
    print(dynamics.markdown(summary))
    print(f"wrote {Path(args.output) / 'dynamics.png'}, dynamics.json, dynamics.md")


def cmd_selection(args: argparse.Namespace) -> None:
    seq_len = args.seq_len or run_seq_len(args.model) or 512
    summary = selection_page.write_page(
        args.model, args.reference, args.text, args.output, tokenizer=args.tokenizer or model_tokenizer(args.model),
        slm=SLMConfig(ratio=args.ratio, score=args.score), seq_len=seq_len, max_rows=args.max_rows)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")


def cmd_curves(args: argparse.Namespace) -> None:
    finals = eval_curves.plot(args.run, args.output) if args.eval else loss_curves.plot(args.run, args.output, args.smoothing)
    print(json.dumps(finals, indent=2))
    print(f"wrote {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.analyze", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dynamics", help="H->H / L->H / H->L / L->L token categories across a run's checkpoints")
    d.add_argument("--run", required=True, help="training run directory (its checkpoints are compared)")
    d.add_argument("--data", required=True, nargs="+", help="held-out files (jsonl, txt, parquet or prepared rows)")
    d.add_argument("--output", required=True, help="directory for dynamics.png / .json / .md")
    d.add_argument("--threshold", type=float, default=None,
                   help="High = loss above this (nats; default: the median token loss at the first checkpoint)")
    d.add_argument("--steps", type=int, nargs="*", help="only these checkpoint steps (default: all)")
    d.add_argument("--tokenizer", help="default: the run's tokenizer")
    d.add_argument("--seq-len", type=int, help="default: the run's data.seq_len")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--max-rows", type=int, default=256, help="held-out rows to score")
    d.set_defaults(func=cmd_dynamics)
    s = sub.add_parser("selection", help="HTML page of a text's tokens colored by score and selection")
    s.add_argument("--model", required=True, help="a run, checkpoint or HF directory of the trained model")
    s.add_argument("--reference", required=True, help="a run, checkpoint or HF directory of the reference")
    s.add_argument("--text", required=True, help="a .txt file (or jsonl/parquet with a text field)")
    s.add_argument("--output", required=True, help="HTML file to write")
    s.add_argument("--ratio", type=float, default=0.6)
    s.add_argument("--score", default="excess", help="excess, reference_loss, reference_entropy or intersection")
    s.add_argument("--tokenizer", help="default: the model's tokenizer")
    s.add_argument("--seq-len", type=int, help="default: the model run's data.seq_len, else 512")
    s.add_argument("--max-rows", type=int, default=8, help="packed rows of the text to show")
    s.set_defaults(func=cmd_selection)
    c = sub.add_parser("curves", help="PNG of selected vs unselected token loss (metrics.jsonl), or with --eval "
                                      "of held-out loss and few-shot accuracy vs tokens (eval.jsonl)")
    c.add_argument("--run", required=True, action="append", help="training run directory (repeat for several)")
    c.add_argument("--output", required=True, help="PNG file to write")
    c.add_argument("--smoothing", type=float, default=0.9, help="EMA factor in [0, 1) (0 = raw)")
    c.add_argument("--eval", action="store_true",
                   help="plot eval.jsonl instead: each held-out set's loss and each task's accuracy vs training tokens")
    c.set_defaults(func=cmd_curves)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
