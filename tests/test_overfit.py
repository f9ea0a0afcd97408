"""A tiny OAT tokenizer overfits a fixed batch of smooth trajectories, with ordered (coarse-to-fine) prefixes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from oat_helpers import smooth_actions

from oat_jax import OATConfig, OATModel, init_params
from oat_jax.training.tokenizer.objective import Objective

# Tiny model, no ordinary dropout. Nested dropout in 'power' mode (P(k) ~ k^2): on a memorisable batch the pow2
# default trains k=4 and k=8 equally and then leaves k=8 at about the k=4 error after a few hundred steps; weighting
# long prefixes makes the full reconstruction converge fast while every prefix length is still trained.
CONFIG = OATConfig(action_dim=2, horizon=16, num_tokens=8, levels=(8, 5, 5, 5), enc_width=64, enc_depth=1,
                   enc_heads=2, dec_width=64, dec_depth=2, dec_heads=2, dec_ffn_dim=128, enc_dropout=0.0,
                   dec_dropout=0.0, dec_attn_dropout=0.0)
OBJECTIVE = Objective(nested_dropout="power", power=2.0)
STEPS = 1000
PREFIXES = (1, 2, 4, 8)


def _train(actions):
    model = OATModel(CONFIG)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup_steps=50, decay_steps=STEPS, end_value=0.0)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    params = init_params(CONFIG, jax.random.key(0))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        lengths = OBJECTIVE.row_lengths(key, actions.shape[0], CONFIG.num_tokens)
        loss_fn = lambda p: OBJECTIVE.loss(model, p, actions, lengths, key)  # noqa: E731

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def prefix_mse(params):
        return jnp.stack([jnp.mean((model.apply({"params": params}, actions, lengths=k)[0] - actions) ** 2)
                          for k in PREFIXES])

    initial = np.asarray(prefix_mse(params))
    for key in jax.random.split(jax.random.key(1), STEPS):
        params, opt_state, _ = step(params, opt_state, key)
    return initial, np.asarray(prefix_mse(params))


def test_tiny_model_overfits_with_non_increasing_prefix_error():
    actions = jnp.asarray(smooth_actions(16, CONFIG.horizon, CONFIG.action_dim, seed=0, max_freq=0.5))  # in [-1, 1]
    initial, mse = _train(actions)
    assert initial[-1] > 0.05  # zero-initialised head: the untrained model outputs 0
    assert mse[-1] < 1e-3, f"normalized MSE at k=N is {mse[-1]:.2e} after {STEPS} steps"
    assert all(a >= b for a, b in zip(mse, mse[1:])), f"per-prefix MSE over k={PREFIXES} increases: {mse}"
    assert mse[0] > 5 * mse[-1], f"the first token alone should be clearly worse than all tokens: {mse}"
