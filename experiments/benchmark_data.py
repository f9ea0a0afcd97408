"""Throughput of the action-only chunk pipeline: `python -m experiments.benchmark_data [--dataset DIR]`.

Prints chunks per second (batches of `--batch_size` action chunks of `--horizon` steps, training settings:
shuffle + repeat) after a warm-up, over `--repeats` timed windows.
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default=EMBEDDED_DATASET_DIR, help="RLDS builder directory")
    parser.add_argument("--horizon", type=int, default=32, help="actions per chunk")
    parser.add_argument("--batch_size", type=int, default=256, help="chunks per batch")
    parser.add_argument("--batches", type=int, default=400, help="timed batches per window")
    parser.add_argument("--warmup", type=int, default=50, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows")
    parser.add_argument("--cache", action="store_true", help="cache parsed trajectories in memory")
    args = parser.parse_args()
    rates = [measure(args.dataset, horizon=args.horizon, batch_size=args.batch_size, batches=args.batches,
                     warmup=args.warmup, cache=args.cache) for _ in range(args.repeats)]
    print(f"action-only pipeline, H={args.horizon}, batch {args.batch_size}, cache={args.cache}: "
          f"{max(rates):,.0f} chunks/s (best of {args.repeats}; all: {', '.join(f'{r:,.0f}' for r in rates)}; "
          f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
