"""Held-out loss curves of finished training runs, and what to read off them."""

from __future__ import annotations

from pathlib import Path

from rho_jax.training.run_dir import EVAL_FILE, read_jsonl

Curve = list[tuple[int, float]]  # (tokens trained, held-out loss), by tokens


def heldout_curve(run_dir: str | Path, eval_set: str = "heldout") -> Curve:
    """The `eval_set` losses a run logged in eval.jsonl, as (tokens, loss) sorted by tokens."""
    path = Path(run_dir) / EVAL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not evaluated {eval_set!r}.")
    curve = sorted((r["tokens"], r["loss"]) for r in read_jsonl(path) if r["set"] == eval_set)
    if not curve:
        raise ValueError(f"{path} has no evaluation of the set {eval_set!r}.")
    return curve


def tokens_to_reach(curve: Curve, target: float) -> float | None:
    """Tokens after which the curve first reaches `target` (linear between evaluations), None if never.

    With consecutive points (t0, l0) above and (t1, l1) at or below the target, the answer is
    t0 + (t1 - t0) * (l0 - target) / (l0 - l1).
    """
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if l1 <= target < l0:
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return float(curve[0][0]) if curve[0][1] <= target else None
