"""Optimizers and learning-rate schedules (optax), built from `config.optimizer`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine decay, inverse-square-root decay, or constant."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(num_train_steps - warmup, 1), alpha=cfg.end_learning_rate_factor)
    elif cfg.schedule == "rsqrt":
        # T5's schedule: lr proportional to 1/sqrt(step), continuous with the end of warmup.
        def decay(step: jax.Array) -> jax.Array:
            return peak * jnp.sqrt(max(warmup, 1) / (step + max(warmup, 1)))
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _is_matrix(params: Any) -> Any:
    # Weight decay applies to matrices only, not to norm scales (rank-1), as usual for Transformers.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name`, with global-norm gradient clipping in front when configured."""
    if cfg.name == "adamw":
        base = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_is_matrix)
    elif cfg.name == "adafactor":
        base = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None)
    else:
        base = optax.sgd(schedule, momentum=cfg.momentum or None)
    if cfg.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), base)
    return base
