"""Argument checks shared by the benchmark suites' command lines."""

from __future__ import annotations

import argparse


def below_minimum(args: argparse.Namespace, minimums: dict[str, int]) -> str | None:
    """The error for the first option `name` in `minimums` whose value is below its minimum (None: all fine)."""
    for name, least in minimums.items():
        if getattr(args, name) < least:
            return f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}."
    return None
