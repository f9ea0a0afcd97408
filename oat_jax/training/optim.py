"""Optimizer: AdamW with decay on >=2-D weights only, global-norm clipping, warmup then a cosine schedule (constant
with `min_lr_ratio` 1).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.95, 1e-8  # AdamW betas and epsilon (the reference's)


def make_lr_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Learning rate per update index `count` (0-based): linear warmup, then a cosine decay.

    Warmup: lr * (count + 1) / warmup_steps for count < warmup_steps, so the very first update already moves the
    params (a warmup starting at exactly 0 wastes a step). Cosine: from lr down to lr * min_lr_ratio at `num_steps`;
    min_lr_ratio 1 keeps lr constant (the reference's schedule).

    Args:
      optim: config with `lr`, `warmup_steps`, `min_lr_ratio` (in (0, 1]).
      num_steps: total number of updates of the run (the end of the cosine).
    Returns:
      A function int32 scalar -> float32 scalar learning rate.
    """
    if not 0.0 < optim.min_lr_ratio <= 1.0:
        raise ValueError(f"config.optim.min_lr_ratio must be in (0, 1] (1: a constant lr after the warmup), got "
                         f"{optim.min_lr_ratio}.")
    if optim.lr <= 0:
        raise ValueError(f"config.optim.lr must be > 0, got {optim.lr}.")
    if optim.warmup_steps < 0:
        raise ValueError(f"config.optim.warmup_steps must be >= 0, got {optim.warmup_steps}.")
    peak, warmup = float(optim.lr), int(optim.warmup_steps)
    decay_steps = max(int(num_steps) - warmup, 1)
    floor = peak * float(optim.min_lr_ratio)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum(1.0, (count + 1.0) / max(warmup, 1))
        progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
        cosine = floor + 0.5 * (peak - floor) * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count < warmup, warm, cosine)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True for weights with ndim >= 2 (matrices, registers), False for biases etc."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> tuple[optax.GradientTransformation,
                                                                              optax.Schedule]:
    """AdamW (+ optional global-norm clipping) following `config.optim`.

    Args:
      optim: config with `lr`, `warmup_steps`, `min_lr_ratio`, `weight_decay`,
        `clip_norm` (<= 0 disables clipping).
      num_steps: total number of updates of the run.
    Returns:
      (optax transformation over float32 params, the learning-rate schedule for logging).
    """
    schedule = make_lr_schedule(optim, num_steps)
    adamw = optax.adamw(schedule, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS, weight_decay=optim.weight_decay,
                        mask=weight_decay_mask)
    if optim.clip_norm and optim.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adamw), schedule
    return adamw, schedule
