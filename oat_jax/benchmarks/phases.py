"""The benchmark phases: their names, where each one's `run_<phase>(config) -> dict` lives, running one in this
process (`run_phase`: results plus device, wall time and peak memory) and the matmul phase.

Each phase measures after compilation and warm-up, blocks on every result (`jax.block_until_ready`) and summarises
repeated runs by median and 10th/90th percentiles (`oat_jax.timing`). The train and data phases (`train_phase`,
`data_phase`) need the training code and the data pipelines, so they are imported only when they run.

Run one phase in this process (what the benchmark's subprocesses do):
  python -m oat_jax.benchmarks.phases PHASE CONFIG_JSON OUT_JSON
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from oat_jax import timing
from oat_jax.benchmarks.costs import flops_of, rate_fields
from oat_jax.benchmarks.machine import device_info, max_rss_mib

PHASES = ("matmul", "tokenizer", "train", "train_multi", "data")
RUNNERS = {"matmul": "oat_jax.benchmarks.phases:run_matmul",
           "tokenizer": "oat_jax.benchmarks.tokenizer_phase:run_tokenizer",
           "train": "oat_jax.benchmarks.train_phase:run_train",
           "train_multi": "oat_jax.benchmarks.train_phase:run_train_multi",
           "data": "oat_jax.benchmarks.data_phase:run_data"}


def runner(phase: str) -> Callable[[ml_collections.ConfigDict], dict[str, Any]]:
    """The `run_<phase>` function of `phase` (its module imported now)."""
    if phase not in RUNNERS:
        raise ValueError(f"Unknown benchmark phase {phase!r}; choose from {PHASES}.")
    module, name = RUNNERS[phase].split(":")
    return getattr(importlib.import_module(module), name)


def run_matmul(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The machine's measured matmul peak: a jitted n x n x n matmul per dtype (FLOPs = 2 n^3)."""
    n = int(config.matmul.size)
    results = []
    for dtype in config.matmul.dtypes:
        keys = jax.random.split(jax.random.key(config.seed))
        a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
        compiled = jax.jit(jnp.matmul).lower(a, b).compile()
        stats = timing.time_calls(lambda: compiled(a, b), config.matmul.repeats, config.max_seconds,
                                  warmup=config.warmup, block=jax.block_until_ready)
        flops = 2.0 * n ** 3
        results.append({"dtype": dtype, "n": n, **stats, **rate_fields(stats, flops, 1),
                        "xla_flops": flops_of(compiled)})
    return {"results": results}


def run_phase(phase: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs one phase in this process: its {"results": [row dicts]} plus "device" (`machine.device_info`),
    "wall_s" and the peak RSS before/after the phase ("max_rss_before_mib", "max_rss_after_mib")."""
    run = runner(phase)
    rss_before = max_rss_mib()
    clock = timing.Stopwatch()
    out = run(config)
    out.update(device=device_info(), wall_s=clock.elapsed(), max_rss_before_mib=rss_before,
               max_rss_after_mib=max_rss_mib())
    return out


def main(argv: list[str]) -> None:
    """Subprocess entry point: PHASE CONFIG_JSON OUT_JSON (the config as `ConfigDict.to_json` wrote it)."""
    if len(argv) != 4:
        raise SystemExit(f"usage: python -m oat_jax.benchmarks.phases PHASE CONFIG_JSON OUT_JSON (phases: "
                         f"{', '.join(PHASES)})")
    phase, config_path, out_path = argv[1:]
    with open(config_path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    result = run_phase(phase, config)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv)
