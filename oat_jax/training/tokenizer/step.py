"""The tokenizer's pure train step: the objective's loss (oat_jax/training/tokenizer/objective.py), chunk augmentation,
gradient accumulation, optimizer update, EMA."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oat_jax.config import OATConfig
from oat_jax.model import OATModel
from oat_jax.training.tokenizer import augment
from oat_jax.training.tokenizer.objective import Objective
from oat_jax.training.train_state import TrainState, apply_gradients
from oat_jax.training.sharding import BATCH_AXES


def model_config(model_cfg: ml_collections.ConfigDict, action_dim: int) -> OATConfig:
    """`OATConfig` from `config.model` (fields not listed there keep OATConfig's defaults) with the dataset's
    `action_dim`; an unknown field is a ValueError naming it."""
    fields = model_cfg.to_dict()
    if "action_dim" in fields:
        raise ValueError("config.model.action_dim: the action dimension is the dataset's; remove the field.")
    return OATConfig.from_dict({**fields, "action_dim": action_dim})


def init_train_state(model: OATModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state: params initialised from `seed`, EMA = params, zero counters. Jit-able (no arguments traced)."""
    init_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed))
    c = model.config
    params = model.init({"params": init_rng}, jnp.zeros((1, c.horizon, c.action_dim), jnp.float32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), ema_count=jnp.zeros((), jnp.int32), rng=run_rng)


def _split_micro(x: jax.Array, accum_steps: int, mesh: Mesh | None) -> jax.Array:
    """(B, ...) -> (accum_steps, B / accum_steps, ...); micro-batch i takes rows i, i + accum_steps, ... so each
    one stays spread over every device."""
    micro = jnp.swapaxes(x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]), 0, 1)
    if mesh is not None:
        micro = jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, P(None, BATCH_AXES)))
    return micro


def make_train_step(model: OATModel, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    ema_cfg: ml_collections.ConfigDict, objective: Objective,
                    augment_cfg: ml_collections.ConfigDict | None = None, accum_steps: int = 1,
                    mesh: Mesh | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds `train_step(state, batch) -> (state, metrics)` (pure; jit it with shardings outside).

    One step on the batch {"actions": (B, H, D_a) float32, normalized (`data.train_batches`)}: draw the prefix
    length of each row (`objective.row_lengths`); augment the chunks of the rows decoded at >= augment.min_length tokens
    (`augment`); split the batch into `accum_steps` micro-batches of B / accum_steps rows (rows i, i + accum_steps,
    ..., each still spread over every device; `mesh` pins them to the batch sharding) whose gradients of
    `objective.loss` are averaged before one optimizer update; update the EMA.
    metrics: {"loss", "grad_norm", "lr", "ema_decay"} float32 scalars.
    """
    n = model.config.num_tokens
    objective.validate(n)
    augmenting = augment.is_active(augment_cfg)
    if augmenting:
        augment.check_config(augment_cfg, n)

    def grads_of(params, actions, lengths, rng):
        return jax.value_and_grad(lambda p: objective.loss(model, p, actions, lengths, rng))(params)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        actions = batch["actions"]
        drop_rng, nested_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
        lengths = objective.row_lengths(nested_rng, actions.shape[0], n, accum_steps)
        if augmenting:
            augmented = augment.augment_chunks(actions, jax.random.fold_in(nested_rng, 1), augment_cfg)
            actions = augment.gate_by_length(actions, augmented, lengths, augment_cfg, n)
        if accum_steps == 1:
            loss, grads = grads_of(state.params, actions, lengths, drop_rng)
        else:
            def body(carry, xs):
                i, x, k = xs
                loss_i, grads_i = grads_of(state.params, x, k, jax.random.fold_in(drop_rng, i))
                return jax.tree.map(jnp.add, carry, (loss_i, grads_i)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            xs = (jnp.arange(accum_steps), _split_micro(actions, accum_steps, mesh),
                  _split_micro(lengths, accum_steps, mesh))
            (loss, grads), _ = jax.lax.scan(body, zeros, xs)
            loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
        new_state, decay = apply_gradients(state, grads, tx, ema_cfg)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
                   "ema_decay": decay}
        return new_state, metrics

    return train_step
