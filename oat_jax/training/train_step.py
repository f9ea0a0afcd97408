"""Train state and the pure train step (loss, gradient accumulation, optimizer update, EMA)."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oat_jax.config import OATConfig
from oat_jax.decoder import sample_keep_lengths
from oat_jax.model import OATModel
from oat_jax.normalizer import ActionNormalizer
from oat_jax.pretrained import config_from_run
from oat_jax.training import ema
from oat_jax.training.sharding import BATCH_AXES


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


def model_config(model_cfg: ml_collections.ConfigDict, action_dim: int) -> OATConfig:
    """`OATConfig` from `config.model`; action_dim = -1 there means "the dataset's action dimension"
    (the rule `oat_jax.pretrained.config_from_run` applies when a checkpoint is loaded)."""
    return config_from_run(model_cfg.to_dict(), action_dim, "config.model")


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation,
                    ema_cfg: ml_collections.ConfigDict) -> tuple[TrainState, jax.Array]:
    """One optimizer update and one EMA update; returns (the next state, the EMA decay used (float32 scalar)).

    `grads` has the structure of `state.params`; `ema_cfg` holds `power` and `max_decay` (see `ema.ema_update`).
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, decay = ema.ema_update(state.ema_params, params, state.ema_count, ema_cfg.power, ema_cfg.max_decay)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
                         ema_count=state.ema_count + 1), decay


def init_train_state(model: OATModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state: params initialised from `seed`, EMA = params, zero counters. Jit-able (no arguments traced)."""
    init_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed))
    c = model.config
    params = model.init({"params": init_rng}, jnp.zeros((1, c.horizon, c.action_dim), jnp.float32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), ema_count=jnp.zeros((), jnp.int32), rng=run_rng)


def reconstruction_loss(model: OATModel, params: Any, actions_norm: jax.Array, lengths: jax.Array,
                        rng: jax.Array) -> jax.Array:
    """Training loss: mean squared error in normalized units, dropout on, the decoder seeing `lengths` tokens.

    Args:
      actions_norm: (B, H, D_a) float32, normalized.
      lengths: (B,) int32 in 1..N, the kept prefix length of each example (nested dropout).
      rng: PRNG key of the "dropout" stream.
    Returns:
      float32 scalar.
    """
    recon, _ = model.apply({"params": params}, actions_norm, deterministic=False, lengths=lengths,
                           rngs={"dropout": rng})
    return jnp.mean(jnp.square(recon.astype(jnp.float32) - actions_norm))


def _split_micro(x: jax.Array, accum_steps: int, mesh: Mesh | None) -> jax.Array:
    """(B, ...) -> (accum_steps, B / accum_steps, ...); micro-batch i takes rows i, i + accum_steps, ... so each
    one stays spread over every device."""
    micro = jnp.swapaxes(x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]), 0, 1)
    if mesh is not None:
        micro = jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, P(None, BATCH_AXES)))
    return micro


def make_train_step(model: OATModel, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    normalizer: ActionNormalizer, ema_cfg: ml_collections.ConfigDict,
                    accum_steps: int = 1,
                    mesh: Mesh | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds `train_step(state, batch) -> (state, metrics)` (pure; jit it with shardings outside).

    Nested dropout: one kept prefix length per example of the global batch is drawn from the config's
    distribution ('none' = always N). The batch {"actions": (B, H, D_a) float32, raw units} is then split into
    `accum_steps` micro-batches of B / accum_steps examples (each still spread over every device) whose gradients
    are averaged before a single optimizer update: without ordinary dropout this equals one step on the whole batch.
    `mesh` (if given) pins the micro-batches to the batch sharding.
    metrics: {"loss", "grad_norm", "lr", "ema_decay"} float32 scalars.
    """
    c = model.config

    def grads_of(params, actions, lengths, rng):
        return jax.value_and_grad(lambda p: reconstruction_loss(model, p, actions, lengths, rng))(params)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        actions = normalizer.normalize(batch["actions"])
        drop_rng, nested_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
        lengths = sample_keep_lengths(nested_rng, actions.shape[0], c.num_tokens, c.nested_dropout,
                                      c.nested_dropout_power)
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
