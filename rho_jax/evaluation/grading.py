"""Grade many predictions against their ground truths, each comparison in a worker process with a time limit.

This mirrors the harness's `evaluate.py`: every `math_equal(pred, gold)` is a task in a `pebble`
process pool with a per-task limit of `timeout_s` seconds (the harness's 3), counted from when a
worker starts the task; a task past its limit has its worker killed and replaced, counts as wrong,
and is counted in `Grades.timeouts`. A worker that dies (a crash in a native library, out of memory)
also counts as wrong and is counted in `Grades.crashes`. Workers come from a fork server, so a
parent that has started JAX (and its threads) is never forked, and each worker loads the LaTeX
parsers before its first task, so that start-up time is not charged to a comparison.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
from pebble import ProcessExpired, ProcessPool

from rho_jax.evaluation.equivalence import math_equal
from rho_jax.evaluation.symbolic import require_latex_parsers

HARNESS_TIMEOUT_S = 3.0
_WORKER_MODULES = ["rho_jax.evaluation.equivalence"]


@dataclasses.dataclass(frozen=True)
class Grades:
    """Per-sample verdicts: `correct[i]` is False when sample i was unequal, timed out or crashed."""

    correct: list[bool]
    timed_out: list[bool]
    crashed: list[bool]

    @property
    def timeouts(self) -> int:
        return sum(self.timed_out)

    @property
    def crashes(self) -> int:
        return sum(self.crashed)

    @property
    def accuracy(self) -> float:
        """Percent correct, rounded to 1 decimal with numpy as the harness reports it (0.0 for no samples)."""
        return float(np.round(np.mean(self.correct) * 100, decimals=1)) if self.correct else 0.0


def grade_answers(
    preds: Sequence[str],
    golds: Sequence[str],
    *,
    percent_leniency: bool = True,
    timeout_s: float = HARNESS_TIMEOUT_S,
    workers: int | None = None,
) -> Grades:
    """`math_equal(preds[i], golds[i], percent_leniency=...)` for every i, each within `timeout_s` seconds.

    `workers`: number of worker processes (None: one per CPU, like the harness).
    """
    if len(preds) != len(golds):
        raise ValueError(f"preds and golds differ in length: {len(preds)} predictions, {len(golds)} ground truths")
    for name, values in (("preds", preds), ("golds", golds)):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}] is a {type(values[bad]).__name__}; every prediction and ground truth must be a str")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1 (or None for one per CPU), got {workers}")
    require_latex_parsers()
    if not preds:
        return Grades(correct=[], timed_out=[], crashed=[])
    count = len(preds)
    correct, timed_out, crashed = [False] * count, [False] * count, [False] * count
    processes = min(workers or os.cpu_count() or 1, count)
    with ProcessPool(max_workers=processes, initializer=require_latex_parsers, context=_worker_context()) as pool:
        futures = [pool.schedule(_compare, args=(p, g, percent_leniency), timeout=timeout_s) for p, g in zip(preds, golds)]
        for i, future in enumerate(futures):
            try:
                correct[i] = future.result()
            except FutureTimeout:
                timed_out[i] = True
            except ProcessExpired:
                crashed[i] = True
    return Grades(correct=correct, timed_out=timed_out, crashed=crashed)


def _compare(pred: str, gold: str, percent_leniency: bool) -> bool:
    """The task a worker runs (a module-level function, so a worker can import it)."""
    return math_equal(pred, gold, percent_leniency=percent_leniency)


def _worker_context() -> multiprocessing.context.BaseContext:
    """A fork-server context whose server has imported the grader once (workers fork from it cheaply)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_WORKER_MODULES)
    return context
