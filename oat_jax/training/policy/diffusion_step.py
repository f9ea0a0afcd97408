"""Pure train and eval steps of the Diffusion Policy: denoising loss, optimizer update, EMA.

The train state is the shared `TrainState` (step, params, ema_params, opt_state, ema_count, rng).
Batches: {"actions": (B, H, D_a) float32 normalized to [-1, 1], "state": (B, K, obs_dim) float32 normalized}
(+ "image" (B, K, cams, h, w, c) uint8); eval batches add "seed" (B,) int32 (each example's fixed noise and
timestep, so the held-out loss does not depend on the batch layout) and "weights" (B,) float32.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from oat_jax.policy import ddim
from oat_jax.policy.diffusion import DiffusionPolicyModel, diffusion_loss, init_params, sample_actions
from oat_jax.training.policy.step import observation
from oat_jax.training.train_state import TrainState, apply_gradients


def init_diffusion_state(model: DiffusionPolicyModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state from `seed` (EMA = params, zero counters). Jit-able."""
    init_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = init_params(model.config, init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), ema_count=jnp.zeros((), jnp.int32), rng=run_rng)


def make_diffusion_train_step(model: DiffusionPolicyModel, tx: optax.GradientTransformation,
                              schedule: optax.Schedule, ema_cfg: ml_collections.ConfigDict
                              ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step(state, batch) -> (state, metrics)`; metrics {"loss", "grad_norm", "lr", "ema_decay"} float32
    scalars. Loss = `diffusion_loss` (noise-prediction MSE at uniform timesteps) with a fresh key per step."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        loss, grads = jax.value_and_grad(
            lambda p: diffusion_loss(model, p, observation(batch), batch["actions"], rng))(state.params)
        new_state, decay = apply_gradients(state, grads, tx, ema_cfg)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
                           "ema_decay": decay}

    return train_step


def make_diffusion_eval_step(model: DiffusionPolicyModel, sample_steps: int = 0) -> Callable[[Any, dict], dict]:
    """`eval_step(params, batch) -> sums`: weighted sums of the per-example denoising MSE ("mse") at the example's
    fixed noise and timestep, and of the examples ("count"); with `sample_steps` > 0 also the MSE of chunks sampled
    with that many DDIM steps against the real ones ("sample_mse", normalized units). Divide with
    `summarize_diffusion_eval`."""
    c = model.config
    acp = c.alphas_cumprod()

    def eval_step(params, batch):
        actions = batch["actions"].astype(jnp.float32)
        keys = jax.vmap(jax.random.PRNGKey)(batch["seed"])  # (B, 2)
        noise = jax.vmap(lambda k: jax.random.normal(k, actions.shape[1:], jnp.float32))(keys)
        t = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, c.num_train_timesteps))(keys)
        pred = model.apply({"params": params}, observation(batch), ddim.add_noise(acp, actions, noise, t), t)
        target = ddim.prediction_target(acp, actions, noise, t, c.prediction_type)
        w = batch["weights"]
        sums = {"mse": jnp.sum(jnp.mean(jnp.square(pred - target), axis=(1, 2)) * w), "count": jnp.sum(w)}
        if sample_steps:
            sampled = sample_actions(model, params, observation(batch), jax.random.fold_in(keys[0], 2), sample_steps)
            sums["sample_mse"] = jnp.sum(jnp.mean(jnp.square(sampled - actions), axis=(1, 2)) * w)
        return sums

    return eval_step


def summarize_diffusion_eval(sums: dict) -> dict[str, float]:
    """{"val_loss" (denoising MSE), "val_sample_mse" (when measured)} from summed eval-step outputs."""
    n = max(float(sums["count"]), 1.0)
    out = {"val_loss": float(sums["mse"]) / n}
    if "sample_mse" in sums:
        out["val_sample_mse"] = float(sums["sample_mse"]) / n
    return out
