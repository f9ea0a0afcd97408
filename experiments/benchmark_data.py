"""Data throughput: `python -m experiments.benchmark_data [--dataset DIR]` or `... --convert [--episodes 320]`.

Default: chunks per second of the action-only chunk pipeline (batches of `--batch_size` action chunks of `--horizon`
steps, training settings: shuffle + repeat) after a warm-up, over `--repeats` timed windows.
--convert: episodes per second of converting a generated HDF5 source of `--episodes` image episodes (two 64x64
cameras, 40 steps by default) single-process and on Apache Beam (DirectRunner, multi-processing) with 1 and 2
worker processes, interleaved over `--repeats` rounds (needs the [convert,beam] extras).
The measurements live in oat_jax/benchmarks/data_phase.py (timed with oat_jax.timing).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from data_pipelines import EMBEDDED_DATASET_DIR  # noqa: E402
from oat_jax.benchmarks import data_phase  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", EMBEDDED_DATASET_DIR, "RLDS builder directory.")
_HORIZON = flags.DEFINE_integer("horizon", 32, "Actions per chunk.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Chunks per batch.")
_BATCHES = flags.DEFINE_integer("batches", 400, "Timed batches per window.")
_WARMUP = flags.DEFINE_integer("warmup", 50, "Untimed batches first.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed windows (--convert: rounds).")
_CACHE = flags.DEFINE_bool("cache", False, "Cache parsed trajectories in memory.")
_CONVERT = flags.DEFINE_bool("convert", False, "Benchmark conversion (single process / Beam 1 / 2 workers).")
_EPISODES = flags.DEFINE_integer("episodes", 320, "--convert: episodes of the generated source.")
_STEPS = flags.DEFINE_integer("steps", 40, "--convert: steps per generated episode.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "--convert: camera height and width.")


def _convert() -> None:
    episodes, repeats, steps, size = _EPISODES.value, _REPEATS.value, _STEPS.value, _IMAGE_SIZE.value
    rates = data_phase.convert_rates(episodes, repeats, steps, size)
    for workers, values in rates.items():
        print(f"convert {episodes} episodes ({steps} steps, 2 cameras {size}x{size}), "
              f"{data_phase.CONVERT_WORKERS[workers]}: {max(values):.1f} episodes/s (best of {repeats}; all: "
              f"{', '.join(f'{v:.1f}' for v in values)})")
    print(f"2 workers / 1 worker: {max(rates[2]) / max(rates[1]):.2f}x; 2 workers / single process: "
          f"{max(rates[2]) / max(rates[0]):.2f}x ({os.cpu_count()} CPUs)")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TFDS INFO lines would bury the result
    if _CONVERT.value:
        _convert()
        return
    rates = [_BATCH_SIZE.value / data_phase.chunk_pipeline_seconds(
        _DATASET.value, horizon=_HORIZON.value, batch_size=_BATCH_SIZE.value, batches=_BATCHES.value,
        warmup=_WARMUP.value, cache=_CACHE.value) for _ in range(_REPEATS.value)]
    print(f"action-only pipeline, H={_HORIZON.value}, batch {_BATCH_SIZE.value}, cache={_CACHE.value}: "
          f"{max(rates):,.0f} chunks/s (best of {_REPEATS.value}; all: {', '.join(f'{r:,.0f}' for r in rates)}; "
          f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
    app.run(main)
