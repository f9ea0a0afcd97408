"""Pure train and eval steps of the token policy: teacher-forced cross-entropy, optimizer update, EMA.

The train state is the tokenizer trainer's `TrainState` (step, params, ema_params, opt_state, ema_count, rng).
Batches: {"tokens": (B, N) int32 PAD_ID-padded, "lengths": (B,) int32, "state": (B, K, obs_dim) float32
normalized} (+ "image" (B, K, cams, h, w, c) uint8, "language" (B,) int32 for policies that read them); eval batches
add "weights" (B,) float32. A streamed train batch may carry raw "actions" (B, H, D_a) float32 instead of tokens:
the step tokenizes them on the device with the frozen tokenizer's jax function (`with_targets`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from oat_jax.policy.model import PolicyConfig, TokenPolicyModel, dummy_observation, teacher_forcing
from oat_jax.training.train_state import TrainState, apply_gradients

OBS_NAMES = ("state", "image", "language")


def observation(batch: dict) -> dict:
    """The observation entries of a batch."""
    return {k: batch[k] for k in OBS_NAMES if k in batch}


def init_policy_state(model: TokenPolicyModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state from `seed` (EMA = params, zero counters). Jit-able."""
    init_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed))
    c = model.config
    params = model.init({"params": init_rng}, dummy_observation(c), jnp.zeros((1, c.seq_len), jnp.int32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), ema_count=jnp.zeros((), jnp.int32), rng=run_rng)


def token_losses(model: TokenPolicyModel, params: Any, batch: dict, deterministic: bool,
                 rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-position cross-entropy, correctness and loss mask, each (B, S) float32."""
    c: PolicyConfig = model.config
    inputs, targets, mask = teacher_forcing(batch["tokens"], batch["lengths"], c)
    rngs = None if deterministic else {"dropout": rng}
    logits = model.apply({"params": params}, observation(batch), inputs, deterministic=deterministic, rngs=rngs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return ce, correct, mask


def with_targets(batch: dict, targets: Callable | None, frozen: Any) -> dict:
    """`batch` with "tokens" and "lengths": as given, or computed from its raw "actions" by
    `targets(frozen, actions) -> (tokens (B, N) int32, lengths (B,) int32)` (the frozen tokenizer's
    `device_tokenizer()`), inside the jitted step."""
    if "tokens" in batch:
        return batch
    if targets is None:
        raise ValueError("The batch holds raw actions but the step has no device tokenizer to make its targets.")
    tokens, lengths = targets(frozen, batch["actions"])
    return {**{k: v for k, v in batch.items() if k != "actions"}, "tokens": tokens, "lengths": lengths}


def make_policy_train_step(model: TokenPolicyModel, tx: optax.GradientTransformation, schedule: optax.Schedule,
                           ema_cfg: ml_collections.ConfigDict, targets: Callable | None = None
                           ) -> Callable[..., tuple[TrainState, dict]]:
    """`train_step(state, batch, frozen=None) -> (state, metrics)`; metrics {"loss", "token_acc", "grad_norm", "lr",
    "ema_decay"} float32 scalars. Loss = mean cross-entropy over the real target positions of the batch. A batch of
    raw actions is tokenized by `targets(frozen, actions)` (`with_targets`)."""

    def loss_fn(params, batch, rng):
        ce, correct, mask = token_losses(model, params, batch, False, rng)
        total = jnp.maximum(jnp.sum(mask), 1.0)
        return jnp.sum(ce * mask) / total, jnp.sum(correct * mask) / total

    def train_step(state: TrainState, batch: dict, frozen: Any = None) -> tuple[TrainState, dict]:
        batch = with_targets(batch, targets, frozen)
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        new_state, decay = apply_gradients(state, grads, tx, ema_cfg)
        return new_state, {"loss": loss, "token_acc": acc, "grad_norm": optax.global_norm(grads),
                           "lr": schedule(state.step), "ema_decay": decay}

    return train_step


def make_policy_eval_step(model: TokenPolicyModel) -> Callable[[Any, dict], dict]:
    """`eval_step(params, batch) -> sums`: weighted sums over the batch of cross-entropy ("ce"), correct ids
    ("correct") and target positions ("count"), plus the same for the first position ("ce_first", "correct_first",
    "count_first"). Divide with `summarize_eval`."""

    def eval_step(params, batch):
        ce, correct, mask = token_losses(model, params, batch, True)
        mask = mask * batch["weights"][:, None]
        return {"ce": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask),
                "ce_first": jnp.sum(ce[:, 0] * mask[:, 0]), "correct_first": jnp.sum(correct[:, 0] * mask[:, 0]),
                "count_first": jnp.sum(mask[:, 0])}

    return eval_step


def summarize_eval(sums: dict) -> dict[str, float]:
    """{"val_loss", "val_token_acc", "val_loss_first", "val_acc_first"} from summed eval-step outputs."""
    n, n0 = max(float(sums["count"]), 1.0), max(float(sums["count_first"]), 1.0)
    return {"val_loss": float(sums["ce"]) / n, "val_token_acc": float(sums["correct"]) / n,
            "val_loss_first": float(sums["ce_first"]) / n0, "val_acc_first": float(sums["correct_first"]) / n0}
