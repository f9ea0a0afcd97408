"""The train-step benchmark phases (`oat_jax.benchmarks.phases`): step time, chunks/s and FLOP/s of the compiled
training step (AdamW, clipping, EMA) on one device (`run_train`) and data-parallel over several (`run_train_multi`).

The model, optimizer and EMA settings come from the training config the benchmark config carries
(`config.training`, a variant of experiments/configs/oat.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from oat_jax import timing
from oat_jax.benchmarks.costs import flops_of, rate_fields
from oat_jax.benchmarks.inputs import random_normalizer
from oat_jax.model import OATModel
from oat_jax.training import optim, run_config, sharding
from oat_jax.training.tokenizer import step as tokenizer_step


def _train_setup(config: ml_collections.ConfigDict, dtype: str, batch: int, devices: list):
    """(compiled train step, state, batch {"actions": (batch, H, D_a) float32}) for the training config
    `config.training` on a data-parallel mesh of `devices`."""
    run = run_config.tokenizer_run(config.training)
    mcfg = dataclasses.replace(run.model, action_dim=int(config.train.action_dim), dtype=dtype,
                               **config.model_overrides.to_dict())
    rng = np.random.default_rng(config.seed)
    normalizer = random_normalizer(rng, mcfg.action_dim)
    mesh = sharding.make_mesh(1, devices)
    sharding.check_batch_divisible(batch, mesh)
    model = OATModel(mcfg)
    tx, schedule = optim.make_optimizer(run.optim, int(run.train.num_steps))
    init_fn = lambda: tokenizer_step.init_train_state(model, tx, int(config.seed))  # noqa: E731
    state_sharding = sharding.tree_shardings(jax.eval_shape(init_fn), mesh, run.sharding)
    state = jax.jit(init_fn, out_shardings=state_sharding)()
    batch_sharding = sharding.batch_sharding(mesh)
    actions = normalizer.normalize(rng.uniform(-2.0, 2.0, (batch, mcfg.horizon, mcfg.action_dim)).astype(np.float32))
    data = {"actions": jax.device_put(actions, batch_sharding)}
    step = jax.jit(tokenizer_step.make_train_step(model, tx, schedule, run.ema, run.objective, run.augment),
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
    return step.lower(state, data).compile(), state, data


def _time_train(config: ml_collections.ConfigDict, dtypes, batches, devices: list) -> list[dict[str, Any]]:
    """One row per (dtype, batch): timing summary, rates, XLA FLOPs of the step and whether the loss is finite."""
    rows = []
    for dtype in dtypes:
        for batch in batches:
            compiled, state, data = _train_setup(config, dtype, int(batch), devices)
            flops = flops_of(compiled)
            holder = {"state": state}

            def step():
                holder["state"], metrics = compiled(holder["state"], data)
                return holder["state"], metrics

            stats = timing.time_calls(step, config.train.repeats, config.max_seconds, warmup=config.warmup,
                                      block=jax.block_until_ready)
            loss = float(jax.device_get(step()[1]["loss"]))
            rows.append({"config": config.train.config, "action_dim": int(config.train.action_dim), "dtype": dtype,
                         "batch": int(batch), "devices": len(devices), **stats, **rate_fields(stats, flops, batch),
                         "loss_finite": bool(np.isfinite(loss))})
    return rows


def run_train(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Train step time, chunks/s and FLOP/s (XLA cost analysis of the compiled step) on one device:
    {"results": [one row per dtype and batch]}."""
    return {"results": _time_train(config, config.train.dtypes, config.train.batch_sizes, jax.devices()[:1])}


def run_train_multi(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The float32 train step data-parallel over `config.train.multi_devices` devices (simulated on a CPU host).

    XLA's cost analysis of a partitioned program counts one device's share, so `flops` is per device there and
    `gflops_per_s` the per-device rate; `model_flops` multiplies by the device count (the replicated optimizer
    update is then counted once per device).
    """
    n = int(config.train.multi_devices)
    if jax.device_count() < n:
        raise ValueError(f"The train_multi phase needs {n} devices but JAX sees {jax.device_count()}; on a CPU host "
                         f"set XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX is imported (the "
                         f"benchmark does this in its subprocess) or lower config.train.multi_devices.")
    rows = _time_train(config, ("float32",), config.train.multi_batch_sizes, jax.devices()[:n])
    for row in rows:
        if row["flops"] is not None:
            row["model_flops"] = row["flops"] * n
            row["model_gflops_per_s"] = row["model_flops"] / row["median_s"] / 1e9
    return {"results": rows}
