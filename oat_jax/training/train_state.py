"""`TrainState` and the optimizer + EMA update that both trainers (tokenizer and policy) share."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import ml_collections
import optax

from oat_jax.training import ema


@flax.struct.dataclass
class TrainState:
    """Everything a step needs and a checkpoint holds.

    Attributes:
      step: int32 scalar, number of updates done.
      params: float32 param tree of `OATModel`.
      ema_params: float32 EMA of `params` (used for evaluation and export).
      opt_state: optax state of `params`.
      ema_count: int32 scalar, number of EMA updates done (drives the EMA warm-up).
      rng: uint32 (2,) base PRNG key; step s uses fold_in(rng, s), so a resumed run draws the same randomness.
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    ema_count: jax.Array
    rng: jax.Array



def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation,
                    ema_cfg: ml_collections.ConfigDict) -> tuple[TrainState, jax.Array]:
    """One optimizer update and one EMA update; returns (the next state, the EMA decay used (float32 scalar)).

    `grads` has the structure of `state.params`; `ema_cfg` holds `max_decay` (see `ema.ema_update`; the warm-up
    exponent is the reference's 0.75).
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, decay = ema.ema_update(state.ema_params, params, state.ema_count, max_decay=ema_cfg.max_decay)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
                         ema_count=state.ema_count + 1), decay
