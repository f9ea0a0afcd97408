"""Exponential moving average of the params with the reference warm-up schedule.

decay(n) = 0 for the first two updates (n = number of previous updates < 2), then clip(1 - n**-power, 0, max_decay).
The counter n lives in the train state and is checkpointed, so a resumed run continues the schedule (the reference
restarts it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_decay(count: jax.Array, power: float = 0.75, max_decay: float = 0.9999) -> jax.Array:
    """Decay used for the update that follows `count` previous updates.

    Args:
      count: int scalar, number of EMA updates done so far.
      power: warm-up exponent (0.75 in the reference).
      max_decay: upper clamp (0.9999 in the reference).
    Returns:
      float32 scalar in [0, max_decay].
    """
    n = jnp.asarray(count, jnp.float32)
    value = 1.0 - jnp.power(jnp.maximum(n, 1.0), -power)
    return jnp.where(n < 2, 0.0, jnp.clip(value, 0.0, max_decay)).astype(jnp.float32)


def ema_update(ema_params: Any, params: Any, count: jax.Array, power: float = 0.75,
               max_decay: float = 0.9999) -> tuple[Any, jax.Array]:
    """One EMA step: ema <- decay * ema + (1 - decay) * params.

    Args:
      ema_params, params: float32 pytrees of the same structure.
      count: int scalar, number of EMA updates done so far (the caller increments it).
    Returns:
      (new EMA params, the decay used: float32 scalar).
    """
    decay = ema_decay(count, power, max_decay)
    new = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
    return new, decay
