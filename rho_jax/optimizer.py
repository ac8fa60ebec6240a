"""AdamW with warmup + cosine/linear/constant schedule, weight-decay mask and global-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """learning_rate is the peak, reached after `warmup_steps` of linear warmup from 0; then
    `cosine`/`linear` decay to `min_lr_ratio * learning_rate` at `total_steps`, or `constant`.
    In a training run `total_steps` is left unset and follows the run length (`RunConfig`)."""

    learning_rate: float = 8e-5
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0
    decay_embeddings: bool = False  # weight decay on embed_tokens / lm_head

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.learning_rate <= 0:
            raise ValueError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}.")
        if self.total_steps is not None and self.total_steps <= 0:
            raise ValueError(f"optimizer.total_steps must be a positive integer, got {self.total_steps}.")
        if self.warmup_steps < 0 or (self.total_steps is not None and self.warmup_steps > self.total_steps):
            raise ValueError(
                f"optimizer.warmup_steps ({self.warmup_steps}) must be in [0, total_steps={self.total_steps}]."
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optimizer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}.")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"optimizer.clip_norm must be > 0 or null, got {self.clip_norm}.")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    if cfg.total_steps is None:
        raise ValueError("optimizer.total_steps must be set to build the learning-rate schedule.")
    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, floor, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def weight_decay_mask(params: Any, decay_embeddings: bool) -> Any:
    """True for parameters that get weight decay: matrices, except embeddings unless asked for;
    never norms or biases."""

    def decays(path: tuple, leaf: jax.Array) -> bool:
        names = jax.tree_util.keystr(path)
        if "norm" in names or "bias" in names or leaf.ndim < 2:
            return False
        if "embed_tokens" in names or "lm_head" in names:
            return decay_embeddings
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig, params: Any) -> optax.GradientTransformation:
    """clip_by_global_norm (optional) -> AdamW(schedule, masked weight decay)."""
    adamw = optax.adamw(
        learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, mask=weight_decay_mask(params, cfg.decay_embeddings),
    )
    if cfg.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
