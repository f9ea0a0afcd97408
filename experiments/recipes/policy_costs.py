r"""Measures what a policy comparison costs on this machine: policy inference time per call (batch B, each k) and
training steps/s of the token policy for OAT-like (8 tokens, vocab 1000) and Bin-like (H * D_a tokens, vocab 256)
targets, at a given model size.

  python -m experiments.recipes.policy_costs --width=256 --depth=4 --heads=4 --batch=50 --train_batch=128
"""

import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from oat_jax import timing
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel, init_params, param_count
from oat_jax.policy.sampling import SamplingConfig, Sampler
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy.step import init_policy_state, make_policy_train_step

flags.DEFINE_integer("width", 256, "Model width (and state MLP hidden size).")
flags.DEFINE_integer("depth", 4, "Transformer blocks.")
flags.DEFINE_integer("heads", 4, "Attention heads.")
flags.DEFINE_integer("batch", 50, "Inference batch (parallel environments).")
flags.DEFINE_integer("train_batch", 128, "Training batch.")
flags.DEFINE_integer("obs_dim", 39, "State observation size.")
flags.DEFINE_integer("repeats", 5, "Timed calls (median after one warm-up call).")
flags.DEFINE_string("types", "oat:1000:8,bin:256:128", "Token types timed: name:vocab:max_tokens,...")
_FLAGS = ("width", "depth", "heads", "batch", "train_batch", "obs_dim", "repeats", "types")


def _time(fn, repeats: int) -> float:
    """Median seconds of `fn()` (blocking on its result) over `repeats` calls after one warm-up call."""
    return timing.time_calls(fn, repeats, warmup=1, block=jax.block_until_ready)["median_s"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = types.SimpleNamespace(**{name: flags.FLAGS[name].value for name in _FLAGS})
    out = {"args": vars(args), "devices": str(jax.devices())}
    for spec in args.types.split(","):
        name, vocab, n = spec.split(":")
        config = PolicyConfig(vocab_size=int(vocab), max_tokens=int(n), obs_dim=args.obs_dim, width=args.width,
                              depth=args.depth, num_heads=args.heads, state_hidden=args.width)
        params = init_params(config, jax.random.PRNGKey(0))
        sampler = Sampler(config, SamplingConfig(1.0, 10))
        obs = {"state": jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 2, args.obs_dim)), jnp.float32)}
        ks = [k for k in (1, 2, 4, 8) if k < config.max_tokens] + [config.max_tokens]
        infer = {k: 1000 * _time(lambda k=k: sampler(params, obs, jax.random.PRNGKey(1), k), args.repeats) for k in ks}
        model = TokenPolicyModel(config)
        optim = ml_collections.ConfigDict(dict(lr=3e-4, warmup_steps=10, min_lr_ratio=0.05, weight_decay=0.0,
                                               clip_norm=1.0))
        tx, schedule = make_optimizer(optim, 1000)
        state = init_policy_state(model, tx, 0)
        step = jax.jit(make_policy_train_step(model, tx, schedule, ml_collections.ConfigDict(
            dict(power=0.75, max_decay=0.999))))
        rng = np.random.default_rng(0)
        batch = {"tokens": jnp.asarray(rng.integers(0, int(vocab), (args.train_batch, int(n))), jnp.int32),
                 "lengths": jnp.full((args.train_batch,), int(n), jnp.int32),
                 "state": jnp.asarray(rng.normal(size=(args.train_batch, 2, args.obs_dim)), jnp.float32)}
        holder = [state]

        def one():
            holder[0], m = step(holder[0], batch)
            return m["loss"]

        sec = _time(one, args.repeats)
        out[name] = {"params": param_count(params), "infer_ms_per_call": infer, "train_steps_per_s": 1.0 / sec}
        print(name, json.dumps(out[name]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
