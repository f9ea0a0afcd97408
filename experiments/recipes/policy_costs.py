r"""Measures what a policy comparison costs on this machine: policy inference time per call (batch B, each k) and
training steps/s of the token policy for OAT-like (8 tokens, vocab 1000) and Bin-like (H * D_a tokens, vocab 256)
targets, at a given model size.

  python -m experiments.recipes.policy_costs --width=256 --depth=4 --heads=4 --batch=50 --train_batch=128
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from oat_jax.policy.model import PolicyConfig, TokenPolicyModel, init_params, param_count
from oat_jax.policy.sampling import SamplingConfig, Sampler
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy_step import init_policy_state, make_policy_train_step


def _time(fn, repeats):
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=50, help="inference batch (parallel environments)")
    p.add_argument("--train_batch", type=int, default=128)
    p.add_argument("--obs_dim", type=int, default=39)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--types", default="oat:1000:8,bin:256:128", help="name:vocab:max_tokens,...")
    args = p.parse_args(argv)
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
        optim = ml_collections.ConfigDict(dict(lr=3e-4, warmup_steps=10, schedule="cosine", min_lr_ratio=0.05, b1=0.9,
                                               b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=1.0))
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
    main()
