"""Curate training data: `python -m rho_jax.curate GROUP COMMAND ...`.

    python -m rho_jax.curate decontaminate index|run|summarize ...   n-gram decontamination against the
                                                                     evaluation sets (`rho_jax.curation.decontaminate_cli`)
    python -m rho_jax.curate quality annotate|embed|train|filter ...  phi-1's quality classifier on a model's own
                                                                     embeddings (`rho_jax.curation.quality_cli`)

Each group is its own command-line module with `build_parser()` and `main(argv)`; this module only
dispatches to it (`python -m rho_jax.curate GROUP --help` shows the group's commands).
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["COMMAND_GROUPS", "build_parser", "main"]

# group name -> module with build_parser() and main(argv)
COMMAND_GROUPS = {
    "decontaminate": "rho_jax.curation.decontaminate_cli",
    "quality": "rho_jax.curation.quality_cli",
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each group's parser under its name."""
    parser = argparse.ArgumentParser(prog="python -m rho_jax.curate", description=__doc__.split("\n\n")[0])
    groups = parser.add_subparsers(dest="group", required=True)
    for name, module in COMMAND_GROUPS.items():
        group = importlib.import_module(module).build_parser()
        groups.add_parser(name, parents=[group], add_help=False, help=group.description, description=group.description)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMAND_GROUPS:
        build_parser().parse_args(argv)  # usage, or an error naming the groups
        return 2
    return importlib.import_module(COMMAND_GROUPS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
