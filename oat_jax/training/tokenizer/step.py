"""The tokenizer's pure train step: the objective's loss (oat_jax/training/tokenizer/objective.py), chunk augmentation,
optimizer update, EMA."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from oat_jax.model import OATModel
from oat_jax.training.tokenizer import augment
from oat_jax.training.tokenizer.objective import Objective
from oat_jax.training.train_state import TrainState, apply_gradients


def init_train_state(model: OATModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state: params initialised from `seed`, EMA = params, zero counters. Jit-able (no arguments traced)."""
    init_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed))
    c = model.config
    params = model.init({"params": init_rng}, jnp.zeros((1, c.horizon, c.action_dim), jnp.float32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), ema_count=jnp.zeros((), jnp.int32), rng=run_rng)


def make_train_step(model: OATModel, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    ema_cfg: ml_collections.ConfigDict, objective: Objective,
                    augment_cfg: ml_collections.ConfigDict | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds `train_step(state, batch) -> (state, metrics)` (pure; jit it with shardings outside).

    One step on the batch {"actions": (B, H, D_a) float32, normalized (`data.train_batches`)}: draw the prefix
    length of each row (`objective.row_lengths`); augment the chunks of the rows decoded at all N tokens
    (`augment`); one optimizer update with the gradient of `objective.loss`; update the EMA.
    metrics: {"loss", "grad_norm", "lr", "ema_decay"} float32 scalars.
    """
    n = model.config.num_tokens
    objective.validate(n)
    augmenting = augment.is_active(augment_cfg)
    if augmenting:
        augment.check_config(augment_cfg)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        actions = batch["actions"]
        drop_rng, nested_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
        lengths = objective.row_lengths(nested_rng, actions.shape[0], n)
        if augmenting:
            augmented = augment.augment_chunks(actions, jax.random.fold_in(nested_rng, 1), augment_cfg)
            actions = augment.gate_by_length(actions, augmented, lengths, n)
        loss, grads = jax.value_and_grad(lambda p: objective.loss(model, p, actions, lengths, drop_rng))(state.params)
        new_state, decay = apply_gradients(state, grads, tx, ema_cfg)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
                   "ema_decay": decay}
        return new_state, metrics

    return train_step
