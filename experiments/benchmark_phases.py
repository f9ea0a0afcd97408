"""The measurements behind `python -m experiments.benchmark`, one function per phase.

Each `run_<phase>(config) -> dict` measures after compilation and warm-up, blocks on every result
(`jax.block_until_ready`) and summarises repeated runs by median and 10th/90th percentiles (`timing`). They return
JSON-able dicts; `experiments.benchmark` runs them (each in its own process by default), adds the memory figures,
prints the table and writes the JSON.

Run one phase in this process (what the benchmark's subprocesses do):
  python -m experiments.benchmark_phases PHASE CONFIG_JSON OUT_JSON
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from oat_jax.config import OATConfig  # noqa: E402
from oat_jax.normalizer import ActionNormalizer  # noqa: E402
from oat_jax.tokenizer import OATTokenizer  # noqa: E402

PHASES = ("matmul", "tokenizer", "train", "train_multi", "data")


# ----- timing and cost helpers -----
def summarize(samples: list[float]) -> dict[str, float]:
    """Seconds per run -> {"median_s", "p10_s", "p90_s", "min_s", "samples"} (percentiles interpolated)."""
    s = np.asarray(samples, np.float64)
    return {"median_s": float(np.median(s)), "p10_s": float(np.percentile(s, 10)),
            "p90_s": float(np.percentile(s, 90)), "min_s": float(s.min()), "samples": int(s.size)}


def warm_up(run: Callable[[], Any], calls: int, max_seconds: float) -> None:
    """Calls `run` (blocking on its result) `calls` times, stopping early once `max_seconds` have passed (>= 1)."""
    start = time.perf_counter()
    for _ in range(max(calls, 1)):
        jax.block_until_ready(run())
        if time.perf_counter() - start > max_seconds:
            break


def time_calls(run: Callable[[], Any], repeats: int, max_seconds: float) -> dict[str, float]:
    """Wall time of `run()` including `jax.block_until_ready` on its result, over up to `repeats` calls.

    Stops after `max_seconds` once at least min(3, repeats) samples are taken. Returns `summarize`'s dict.
    """
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < repeats:
        start = time.perf_counter()
        jax.block_until_ready(run())
        samples.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(samples) >= min(3, repeats):
            break
    return summarize(samples)


def flops_of(compiled) -> float | None:
    """FLOPs of one call of an AOT-compiled executable from XLA's cost analysis (None when unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def rate_fields(stats: dict[str, float], flops: float | None, items: int) -> dict[str, float | None]:
    """Throughput (items/s at the median time) and achieved FLOP/s for one timed setting."""
    return {"items_per_s": items / stats["median_s"],
            "flops": flops, "gflops_per_s": None if flops is None else flops / stats["median_s"] / 1e9}


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)  # bytes on macOS, KiB on Linux


def device_info() -> dict[str, Any]:
    """The JAX backend and devices this process computes on."""
    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind, "device_count": len(devices),
            "jax_version": jax.__version__}


def oat_config(config: ml_collections.ConfigDict, action_dim: int, dtype: str) -> OATConfig:
    """The paper's OATConfig with `action_dim`, `dtype` and `config.model_overrides` applied."""
    return OATConfig(action_dim=action_dim, dtype=dtype, **config.model_overrides.to_dict())


def _random_normalizer(rng: np.random.Generator, action_dim: int) -> ActionNormalizer:
    """A 'limits' normalizer fitted on random actions (so the timed functions include the affine maps)."""
    return ActionNormalizer.fit(rng.uniform(-2.0, 2.0, (1000, action_dim)).astype(np.float32))


# ----- phases -----
def run_matmul(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The machine's measured matmul peak: a jitted n x n x n matmul per dtype (FLOPs = 2 n^3)."""
    n = int(config.matmul.size)
    results = []
    for dtype in config.matmul.dtypes:
        keys = jax.random.split(jax.random.key(config.seed))
        a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
        compiled = jax.jit(jnp.matmul).lower(a, b).compile()
        warm_up(lambda: compiled(a, b), config.warmup, config.max_seconds)
        stats = time_calls(lambda: compiled(a, b), config.matmul.repeats, config.max_seconds)
        flops = 2.0 * n ** 3
        results.append({"dtype": dtype, "n": n, **stats, **rate_fields(stats, flops, 1),
                        "xla_flops": flops_of(compiled)})
    return {"results": results}


def _time_tokenizer(config, tok: OATTokenizer, name: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Rows for one tokenizer: pure tokenize/detokenize (AOT-compiled `jax.jit` of `tok.tokenize_fn` /
    `tok.detokenize_fn`, params passed) at every batch and k, plus the validated Python API at the latency batch."""
    c, t = tok.config, config.tokenizer
    params = tok.params
    ks = [k for k in t.prefix_lengths if k <= c.num_tokens]
    rows = []
    base = {"model": name, "action_dim": c.action_dim, "dtype": c.dtype}
    for batch in [int(t.latency_batch)] + [int(b) for b in t.throughput_batches]:
        repeats = t.latency_repeats if batch == t.latency_batch else t.throughput_repeats
        actions_np = rng.uniform(-2.0, 2.0, (batch, c.horizon, c.action_dim)).astype(np.float32)
        actions = jnp.asarray(actions_np)
        tokenize = jax.jit(tok.tokenize_fn).lower(params, actions).compile()
        warm_up(lambda: tokenize(params, actions), config.warmup, config.max_seconds)
        stats = time_calls(lambda: tokenize(params, actions), repeats, config.max_seconds)
        rows.append({**base, "op": "tokenize", "api": "jit", "batch": batch, "k": None, **stats,
                     **rate_fields(stats, flops_of(tokenize), batch)})
        tokens = tokenize(params, actions)
        lengths = jnp.full((batch,), c.num_tokens, jnp.int32)
        detokenize = jax.jit(tok.detokenize_fn).lower(params, tokens, lengths).compile()  # one for every k
        flops = flops_of(detokenize)
        warm_up(lambda: detokenize(params, tokens, lengths), config.warmup, config.max_seconds)
        for k in ks:
            lengths = jnp.full((batch,), k, jnp.int32)
            stats = time_calls(lambda: detokenize(params, tokens, lengths), repeats, config.max_seconds)
            rows.append({**base, "op": "detokenize", "api": "jit", "batch": batch, "k": k, **stats,
                         **rate_fields(stats, flops, batch)})
        if batch != t.latency_batch:
            continue
        # The validated Python API: host checks, padding of the k given tokens to N, transfer, the jitted call.
        tokens_np = np.asarray(tokens)
        warm_up(lambda: tok.tokenize(actions_np), config.warmup, config.max_seconds)
        stats = time_calls(lambda: tok.tokenize(actions_np), t.api_repeats, config.max_seconds)
        rows.append({**base, "op": "tokenize", "api": "python", "batch": batch, "k": None, **stats,
                     **rate_fields(stats, None, batch)})
        warm_up(lambda: tok.detokenize(tokens_np), config.warmup, config.max_seconds)
        for k in ks:
            prefix = tokens_np[:, :k]
            stats = time_calls(lambda: tok.detokenize(prefix), t.api_repeats, config.max_seconds)
            rows.append({**base, "op": "detokenize", "api": "python", "batch": batch, "k": k, **stats,
                         **rate_fields(stats, None, batch)})
    return rows


@jax.jit
def _perturb(params, key: jax.Array):
    """params + N(0, 0.02^2) noise on every leaf (one compiled function for the whole tree)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
                                        for x, k in zip(leaves, keys)])


def run_tokenizer(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Tokenize/detokenize latency (batch 1) and throughput for every model, dtype and prefix length k.

    Rows with api='jit' time the pure functions (`tok.tokenize_fn` / `tok.detokenize_fn`, params passed, under
    `jax.jit`); api='python' rows time the validated API (`tok.tokenize` / `tok.detokenize` on numpy inputs).
    """
    rng = np.random.default_rng(config.seed)
    rows = []
    for name, action_dim in config.tokenizer.action_dims.items():
        for dtype in config.tokenizer.dtypes:
            c = oat_config(config, int(action_dim), dtype)
            tok = OATTokenizer.init(c, jax.random.key(config.seed), _random_normalizer(rng, c.action_dim))
            # Untrained params have zero heads (every token the centre code); perturb them so the timed run is
            # representative (no all-zero shortcuts).
            params = _perturb(tok.params, jax.random.key(config.seed + 1))
            tok = OATTokenizer(c, params, tok.normalizer)
            rows += _time_tokenizer(config, tok, name, rng)
    return {"results": rows}


def _train_setup(config: ml_collections.ConfigDict, dtype: str, batch: int, devices: list):
    """(compiled train step, state, batch) for the training config `config.train.config` on a mesh of `devices`."""
    from experiments.configs import oat as oat_configs
    from oat_jax.training import optim, sharding, train_step

    tcfg = oat_configs.get_config(config.train.config)
    tcfg.model.update(dtype=dtype, **config.model_overrides.to_dict())
    mcfg = train_step.model_config(tcfg.model, int(config.train.action_dim))
    rng = np.random.default_rng(config.seed)
    normalizer = _random_normalizer(rng, mcfg.action_dim)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}), devices)
    sharding.check_batch_divisible(batch, mesh)
    from oat_jax.model import OATModel
    model = OATModel(mcfg)
    tx, schedule = optim.make_optimizer(tcfg.optim, int(tcfg.train.num_steps))
    init_fn = lambda: train_step.init_train_state(model, tx, int(config.seed))  # noqa: E731
    state_sharding = sharding.tree_shardings(jax.eval_shape(init_fn), mesh, tcfg.sharding)
    state = jax.jit(init_fn, out_shardings=state_sharding)()
    batch_sharding = sharding.batch_sharding(mesh)
    actions = rng.uniform(-2.0, 2.0, (batch, mcfg.horizon, mcfg.action_dim)).astype(np.float32)
    data = {"actions": jax.device_put(actions, batch_sharding)}
    step = jax.jit(train_step.make_train_step(model, tx, schedule, normalizer, tcfg.ema, 1, mesh),
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
    return step.lower(state, data).compile(), state, data


def _time_train(config: ml_collections.ConfigDict, dtypes, batches, devices: list) -> list[dict[str, Any]]:
    rows = []
    for dtype in dtypes:
        for batch in batches:
            compiled, state, data = _train_setup(config, dtype, int(batch), devices)
            flops = flops_of(compiled)
            holder = {"state": state}

            def step():
                holder["state"], metrics = compiled(holder["state"], data)
                return holder["state"], metrics

            warm_up(step, config.warmup, config.max_seconds)
            stats = time_calls(step, config.train.repeats, config.max_seconds)
            loss = float(jax.device_get(step()[1]["loss"]))
            rows.append({"config": config.train.config, "action_dim": int(config.train.action_dim), "dtype": dtype,
                         "batch": int(batch), "devices": len(devices), **stats, **rate_fields(stats, flops, batch),
                         "loss_finite": bool(np.isfinite(loss))})
    return rows


def run_train(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Train step time, chunks/s and FLOP/s (XLA cost analysis of the compiled step) on one device."""
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


def run_data(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Chunks/s of the tf.data chunk pipeline (`experiments.benchmark_data.measure`, shuffle + repeat) and of the
    training loop's in-memory batcher (`oat_jax.training.data.InMemoryBatches`)."""
    from data_pipelines import EMBEDDED_DATASET_DIR, loader
    from experiments import benchmark_data

    d = config.data
    dataset = d.dataset or EMBEDDED_DATASET_DIR
    rows = []
    for cache in d.cache:
        rates = [benchmark_data.measure(dataset, horizon=d.horizon, batch_size=d.batch_size, batches=d.batches,
                                        warmup=d.warmup, cache=bool(cache)) for _ in range(d.repeats)]
        stats = summarize([d.batch_size / r for r in rates])  # seconds per batch
        rows.append({"pipeline": "tf.data" + (" cache" if cache else ""), "batch": d.batch_size, **stats,
                     "items_per_s": d.batch_size / stats["median_s"]})
    if d.in_memory:
        from experiments.configs import oat as oat_configs
        from oat_jax.training import data as train_data

        data_cfg = oat_configs.get_config("").data
        start = time.perf_counter()
        chunks = train_data.load_chunks(loader.DatasetSpec(path=dataset), data_cfg, "train", d.horizon)
        load_s = time.perf_counter() - start
        batcher = train_data.InMemoryBatches(chunks, d.batch_size, np.arange(d.batch_size), config.seed)
        counter = iter(range(10 ** 9))
        warm_up(lambda: batcher.local_batch(next(counter))["actions"], d.warmup, config.max_seconds)
        stats = time_calls(lambda: batcher.local_batch(next(counter))["actions"], d.batches, config.max_seconds)
        rows.append({"pipeline": "in-memory", "batch": d.batch_size, **stats,
                     "items_per_s": d.batch_size / stats["median_s"], "load_s": load_s,
                     "chunks_in_memory": int(len(chunks))})
    return {"results": rows}


RUNNERS = {"matmul": run_matmul, "tokenizer": run_tokenizer, "train": run_train, "train_multi": run_train_multi,
           "data": run_data}


def run_phase(phase: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs one phase in this process: its results plus device info, wall time and peak RSS before/after (MiB)."""
    if phase not in RUNNERS:
        raise ValueError(f"Unknown benchmark phase {phase!r}; choose from {PHASES}.")
    rss_before = max_rss_mib()
    start = time.perf_counter()
    out = RUNNERS[phase](config)
    out.update(device=device_info(), wall_s=time.perf_counter() - start, max_rss_before_mib=rss_before,
               max_rss_after_mib=max_rss_mib())
    return out


def main(argv: list[str]) -> None:
    """Subprocess entry point: PHASE CONFIG_JSON OUT_JSON."""
    if len(argv) != 4:
        raise SystemExit(f"usage: python -m experiments.benchmark_phases PHASE CONFIG_JSON OUT_JSON (phases: "
                         f"{', '.join(PHASES)})")
    phase, config_path, out_path = argv[1:]
    with open(config_path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    result = run_phase(phase, config)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv)
