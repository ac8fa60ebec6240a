"""`python -m rho_jax.bench [SUITE] [flags]`: one entry point for the benchmarks.

    python -m rho_jax.bench [flags]                 the train step (`rho_jax.bench.step_bench`)
    python -m rho_jax.bench generate [flags]        greedy decoding vs transformers (`rho_jax.bench.generation_bench`)
    python -m rho_jax.bench decontaminate [flags]   n-gram decontamination vs lm-eval's Janitor
                                                    (`rho_jax.bench.decontamination_bench`)
    python -m rho_jax.bench embed [flags]           document embedding throughput (`rho_jax.bench.embedding_bench`)
    python -m rho_jax.bench loop [flags]            the trainer's tokens/s vs its bare step (`rho_jax.bench.loop_bench`)
    python -m rho_jax.bench gpu [flags]             the prepared GPU check, a report part by part (`rho_jax.bench.gpu_check`)

`python -m rho_jax.bench SUITE --help` lists a suite's flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

STEP_BENCH = "rho_jax.bench.step_bench"
SUITES = {
    "generate": "rho_jax.bench.generation_bench",
    "decontaminate": "rho_jax.bench.decontamination_bench",
    "embed": "rho_jax.bench.embedding_bench",
    "loop": "rho_jax.bench.loop_bench",
    "synthesize": "rho_jax.bench.synthesis_bench",
    "gpu": "rho_jax.bench.gpu_check",
}


def suite_of(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(module of the benchmark `argv` names, its own arguments): a leading suite name, else the step bench."""
    if argv and argv[0] in SUITES:
        return SUITES[argv[0]], list(argv[1:])
    return STEP_BENCH, list(argv)


class _SuiteParser:
    """Parses a command line with the parser of the suite it names (what `build_parser` gives)."""

    def parse_args(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        module, rest = suite_of(sys.argv[1:] if argv is None else argv)
        return importlib.import_module(module).build_parser().parse_args(rest)


def build_parser() -> _SuiteParser:
    return _SuiteParser()


def main(argv: Sequence[str] | None = None) -> int:
    module, rest = suite_of(sys.argv[1:] if argv is None else argv)
    return importlib.import_module(module).main(rest)
