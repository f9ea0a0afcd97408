"""Data throughput: `python -m experiments.benchmark_data [--dataset DIR]` or `... --convert [--episodes 320]`.

Default: chunks per second of the action-only chunk pipeline (batches of `--batch_size` action chunks of `--horizon`
steps, training settings: shuffle + repeat) after a warm-up, over `--repeats` timed windows.
--convert: episodes per second of converting a generated HDF5 source of `--episodes` image episodes (two 64x64
cameras, 40 steps by default) single-process and on Apache Beam (DirectRunner, multi-processing) with 1 and 2
worker processes, interleaved over `--repeats`
rounds (needs the [convert,beam] extras).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data_pipelines import EMBEDDED_DATASET_DIR, loader  # noqa: E402


def measure(dataset: str, *, horizon: int, batch_size: int, batches: int, warmup: int, cache: bool) -> float:
    """Chunks per second over `batches` batches after `warmup` batches."""
    ds = loader.make_chunk_dataset(loader.DatasetSpec(path=dataset), split="train", horizon=horizon,
                                   batch_size=batch_size, shuffle=True, repeat=True, seed=0, cache=cache)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    batch["actions"].numpy()
    return batches * batch_size / (time.perf_counter() - start)


def write_image_source(folder: str, episodes: int, files: int = 8, steps: int = 40, size: int = 64,
                       seed: int = 0) -> str:
    """A LIBERO-like folder of `files` HDF5 files holding `episodes` demos in all (two size x size RGB cameras)."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for f in range(files):
        with h5py.File(os.path.join(folder, f"task_{f}.hdf5"), "w") as h:
            data = h.create_group("data")
            data.attrs["problem_info"] = json.dumps({"language_instruction": f"task {f}"})
            for e in range(f, episodes, files):
                demo = data.create_group(f"demo_{e}")
                demo.create_dataset("actions", data=rng.normal(size=(steps, 7)))
                obs = demo.create_group("obs")
                base = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
                for cam in ("agentview_rgb", "eye_in_hand_rgb"):
                    noise = rng.integers(0, 16, (steps, size, size, 3), dtype=np.uint8)
                    obs.create_dataset(cam, data=base + noise)
                obs.create_dataset("joint_states", data=rng.normal(size=(steps, 7)).astype(np.float32))
    return folder


def measure_convert(source: str, workers: int) -> float:
    """Episodes per second of one conversion of `source` (workers 0 = the single-process path, else Beam)."""
    from data_pipelines import convert

    out = tempfile.mkdtemp(prefix="oat_convert_bench_")
    try:
        start = time.perf_counter()
        argv = ["--format=hdf5", f"--input={source}", f"--output={out}/rlds", "--overwrite"]
        if convert.main(argv + ([f"--num_workers={workers}"] if workers else [])) != 0:
            raise RuntimeError(f"conversion with {workers} workers failed")
        seconds = time.perf_counter() - start
        import tensorflow_datasets as tfds
        return tfds.builder_from_directory(f"{out}/rlds").info.splits["train"].num_examples / seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def convert_benchmark(episodes: int, repeats: int, steps: int = 40, size: int = 64) -> None:
    """Prints episodes/s of the single-process, 1-worker and 2-worker conversions, measured interleaved."""
    import logging
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    source = write_image_source(tempfile.mkdtemp(prefix="oat_convert_src_"), episodes, steps=steps, size=size)
    rates = {0: [], 1: [], 2: []}
    try:
        for _ in range(repeats):
            for workers in rates:
                rates[workers].append(measure_convert(source, workers))
    finally:
        shutil.rmtree(source, ignore_errors=True)
    names = {0: "single process (no Beam)", 1: "Beam, 1 worker", 2: "Beam, 2 workers"}
    for workers, values in rates.items():
        print(f"convert {episodes} episodes ({steps} steps, 2 cameras {size}x{size}), {names[workers]}: {max(values):.1f} episodes/s (best of "
              f"{repeats}; all: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"2 workers / 1 worker: {max(rates[2]) / max(rates[1]):.2f}x; 2 workers / single process: "
          f"{max(rates[2]) / max(rates[0]):.2f}x ({os.cpu_count()} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default=EMBEDDED_DATASET_DIR, help="RLDS builder directory")
    parser.add_argument("--horizon", type=int, default=32, help="actions per chunk")
    parser.add_argument("--batch_size", type=int, default=256, help="chunks per batch")
    parser.add_argument("--batches", type=int, default=400, help="timed batches per window")
    parser.add_argument("--warmup", type=int, default=50, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows")
    parser.add_argument("--cache", action="store_true", help="cache parsed trajectories in memory")
    parser.add_argument("--convert", action="store_true", help="benchmark conversion (single / Beam 1 / 2 workers)")
    parser.add_argument("--episodes", type=int, default=320, help="--convert: episodes of the generated source")
    parser.add_argument("--steps", type=int, default=40, help="--convert: steps per generated episode")
    parser.add_argument("--image_size", type=int, default=64, help="--convert: camera height and width")
    args = parser.parse_args()
    if args.convert:
        convert_benchmark(args.episodes, args.repeats, args.steps, args.image_size)
        return
    rates = [measure(args.dataset, horizon=args.horizon, batch_size=args.batch_size, batches=args.batches,
                     warmup=args.warmup, cache=args.cache) for _ in range(args.repeats)]
    print(f"action-only pipeline, H={args.horizon}, batch {args.batch_size}, cache={args.cache}: "
          f"{max(rates):,.0f} chunks/s (best of {args.repeats}; all: {', '.join(f'{r:,.0f}' for r in rates)}; "
          f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
