"""Training-step cost of tokenizer shapes, timed interleaved in one process (compare the ratio, not the ms).

  python -m experiments.recipes.tokenizer_step_cost

The default small model (width 96, 2 + 2 layers), batch 128, H = 32, D_a = 4: loss + gradient + AdamW update of the
reference shape (enc_patch 1, dec_patch 1, pow2 nested dropout), the patched shape (enc_patch 2, dec_patch 4, P(k)
~ 1/k with 0.9 on k = N) with one decode per example, with the split batch (objective.split: short rows at every
length below N, weighted by P(k), with the monotone hinge), and OAT x,
5 rounds of 20 steps each, alternating. Prints the median ms per step and the ratios to the patched one-decode step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app

from oat_jax import timing
from oat_jax.config import OATConfig
from oat_jax.model import OATModel, init_params
from oat_jax.training.tokenizer.objective import Objective

BASE = dict(action_dim=4, horizon=32, num_tokens=8, levels=(8, 5, 5, 5), enc_width=96, enc_depth=2, enc_heads=4,
            enc_dropout=0.0, dec_width=96, dec_depth=2, dec_heads=4, dec_ffn_dim=384, dec_dropout=0.0,
            dec_attn_dropout=0.0)
PATCHED = dict(enc_patch=2, dec_patch=4)
POWER = dict(nested_dropout="power", power=-1.0, full=0.9)
# name -> (OATConfig overrides, Objective)
SHAPES = {"reference (enc_patch 1, dec_patch 1, pow2)": ({}, Objective()),
          "patched (enc_patch 2, dec_patch 4), one decode per example": (PATCHED, Objective(**POWER)),
          "patched, short rows at every length < N, weighted by P(k) + hinge (objective.split)":
              (PATCHED, Objective(**POWER, split=True, monotone_weight=0.1)),
          "OAT x (patched, every example at N)": (PATCHED, Objective(nested_dropout="none"))}
BATCH, ROUNDS, STEPS = 128, 5, 20


def make_step(config: OATConfig, actions: jax.Array, objective: Objective):
    """-> (jitted step(params, opt_state, key) -> (params, opt_state, loss), params, opt_state)."""
    model = OATModel(config)
    tx = optax.adamw(1e-3)
    params = init_params(config, jax.random.PRNGKey(0))
    objective.validate(config.num_tokens)

    def loss_fn(q, k_len, k_drop):
        lengths = objective.row_lengths(k_len, actions.shape[0], config.num_tokens)
        return objective.loss(model, q, actions, lengths, k_drop)

    def step(p, o, key):
        k_len, k_drop = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(p, k_len, k_drop)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    return jax.jit(step), params, tx.init(params)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    actions = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (BATCH, 32, 4)).astype(np.float32))
    state = {}
    for name, (overrides, objective) in SHAPES.items():
        f, p, o = make_step(OATConfig(**BASE, **overrides), actions, objective)
        p, o, _ = f(p, o, jax.random.PRNGKey(1))  # compile
        jax.block_until_ready(p)
        state[name] = [f, p, o]
    times: dict[str, list[float]] = {name: [] for name in SHAPES}
    for _ in range(ROUNDS):
        for name, entry in state.items():
            keys = iter(range(STEPS))

            def one(entry=entry, keys=keys):
                f, p, o = entry
                entry[1], entry[2], loss = f(p, o, jax.random.PRNGKey(next(keys)))
                return loss

            times[name].append(timing.seconds_per_call(one, STEPS, block=jax.block_until_ready))
    for name, ts in times.items():
        print(f"{name}: median {1000 * np.median(ts):.1f} ms/step (rounds: "
              f"{', '.join(f'{1000 * t:.0f}' for t in ts)})")
    medians = [float(np.median(times[name])) for name in SHAPES]
    for name, median in zip(SHAPES, medians):
        print(f"{name}: {median / medians[1]:.2f}x the patched one-decode step")


if __name__ == "__main__":
    app.run(main)
