"""Data throughput measurements: the tf.data chunk pipeline and the training loop's in-memory batcher (the `data`
phase of `oat_jax.benchmarks.phases`, and `python -m experiments.benchmark_data`), and episodes/s of converting an
image dataset single-process and on Apache Beam (`benchmark_data --convert`).

`data_pipelines` (TensorFlow) is imported inside the functions, so a phase's memory increase includes it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

import ml_collections
import numpy as np

from oat_jax import timing

CONVERT_WORKERS = {0: "single process (no Beam)", 1: "Beam, 1 worker", 2: "Beam, 2 workers"}


def chunk_pipeline_seconds(dataset: str, *, horizon: int, batch_size: int, batches: int, warmup: int,
                           cache: bool, seed: int = 0) -> float:
    """Seconds per batch of the action-only tf.data chunk pipeline over the RLDS builder directory `dataset`
    (training settings: shuffle + repeat; batches of (batch_size, horizon, D_a) actions), over `batches` batches
    after `warmup` untimed ones (one pipelined window, `timing.seconds_per_call`)."""
    from data_pipelines import loader

    ds = loader.make_chunk_dataset(loader.DatasetSpec(path=dataset), split="train", horizon=horizon,
                                   batch_size=batch_size, shuffle=True, repeat=True, seed=seed, cache=cache)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    return timing.seconds_per_call(lambda: next(it), batches, block=lambda batch: batch["actions"].numpy())


def _in_memory_row(config: ml_collections.ConfigDict, dataset: str) -> dict[str, Any]:
    """Loading time and per-batch timing of `oat_jax.training.data.InMemoryBatches` over `dataset`."""
    from data_pipelines import loader
    from oat_jax.training import data as train_data

    d = config.data
    clock = timing.Stopwatch()
    chunks = train_data.load_chunks(loader.DatasetSpec(path=dataset), config.training.data, "train",
                                    d.horizon)
    load_s = clock.elapsed()
    batcher = train_data.InMemoryBatches([chunks], [1.0], d.batch_size, np.arange(d.batch_size), config.seed)
    counter = iter(range(10 ** 9))
    stats = timing.time_calls(lambda: batcher.local_batch(next(counter))["actions"], d.batches, config.max_seconds,
                              warmup=d.warmup)
    return {"pipeline": "in-memory", "batch": d.batch_size, **stats, "items_per_s": d.batch_size / stats["median_s"],
            "load_s": load_s, "chunks_in_memory": int(len(chunks))}


def write_jpeg_rlds(output: str, episodes: int, steps: int, size: int, seed: int = 0) -> str:
    """An RLDS builder directory at `output` laid out like a published Open X-Embodiment dataset: per step a 7-D
    action, a (size, size, 3) camera stored as JPEG (smooth images with a little noise, so the files are of a
    camera's size, not of noise's) and an 8-D state. Returns `output`."""
    from data_pipelines import rlds_writer

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size, dtype=np.float32)

    def episode(i: int) -> rlds_writer.Episode:
        shift = rng.integers(0, 55, (steps, 1, 1, 1))
        frames = (ramp[None, :, None, None] + ramp[None, None, :, None] / 2 + shift
                  + rng.integers(0, 8, (steps, size, size, 3))).clip(0, 255).astype(np.uint8)
        return rlds_writer.Episode(source=f"generated episode {i}", action=rng.normal(size=(steps, 7)),
                                   observation={"image": frames, "state": rng.normal(size=(steps, 8))},
                                   language="pick up the block")

    return rlds_writer.write_rlds((episode(i) for i in range(episodes)), output, image_encoding="jpeg",
                                  overwrite=True, statistics_split=None)


def _pipeline_row(label: str, dataset: str, d: ml_collections.ConfigDict, cache: bool) -> dict[str, Any]:
    stats = timing.summarize([chunk_pipeline_seconds(dataset, horizon=d.horizon, batch_size=d.batch_size,
                                                     batches=d.batches, warmup=d.warmup, cache=cache)
                              for _ in range(d.repeats)])  # seconds per batch
    return {"pipeline": label + (" cache" if cache else ""), "batch": d.batch_size, **stats,
            "items_per_s": d.batch_size / stats["median_s"]}


def run_data(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Chunks/s of the tf.data chunk pipeline (without / with its trajectory cache, `config.data.cache`; the
    summary is over `config.data.repeats` windows) over `config.data.dataset`, of the in-memory batcher, and
    (`config.data.jpeg_episodes` > 0) of the pipeline over a generated RLDS dataset with a
    `jpeg_size` x `jpeg_size` JPEG camera in every step (read, never decoded): {"results": [row dicts]}."""
    from data_pipelines import EMBEDDED_DATASET_DIR

    d = config.data
    dataset = d.dataset or EMBEDDED_DATASET_DIR
    label = "tf.data" if d.dataset else "tf.data (embedded)"
    rows = [_pipeline_row(label, dataset, d, bool(cache)) for cache in d.cache]
    if d.in_memory:
        rows.append(_in_memory_row(config, dataset))
    if d.jpeg_episodes > 0:
        folder = tempfile.mkdtemp(prefix="oat_jpeg_rlds_")
        try:
            clock = timing.Stopwatch()
            path = write_jpeg_rlds(os.path.join(folder, "jpeg_rlds"), d.jpeg_episodes, d.jpeg_steps, d.jpeg_size)
            write_s = clock.elapsed()
            row = _pipeline_row(f"tf.data (RLDS, {d.jpeg_size}x{d.jpeg_size} JPEG per step)", path, d, False)
            rows.append({**row, "write_s": write_s, "dataset_mib": _folder_mib(path)})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return {"results": rows}


def _folder_mib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files) / 2 ** 20


def write_image_source(folder: str, episodes: int, files: int = 8, steps: int = 40, size: int = 64,
                       seed: int = 0) -> str:
    """A LIBERO-like folder of `files` HDF5 files holding `episodes` demos in all: per step a 7-D action, two
    (size, size, 3) uint8 RGB cameras and 7 joint states. Returns `folder`."""
    import h5py

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


def convert_episodes_per_s(source: str, workers: int) -> float:
    """Episodes per second of one conversion of the HDF5 folder `source` (workers 0 = the single-process path,
    else Apache Beam with that many worker processes)."""
    from data_pipelines import convert
    import tensorflow_datasets as tfds

    out = tempfile.mkdtemp(prefix="oat_convert_bench_")
    try:
        clock = timing.Stopwatch()
        argv = ["--format=hdf5", f"--input={source}", f"--output={out}/rlds", "--overwrite"]
        if convert.main(argv + ([f"--num_workers={workers}"] if workers else [])) != 0:
            raise RuntimeError(f"conversion with {workers} workers failed")
        seconds = clock.elapsed()
        return tfds.builder_from_directory(f"{out}/rlds").info.splits["train"].num_examples / seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def convert_rates(episodes: int, repeats: int, steps: int = 40, size: int = 64) -> dict[int, list[float]]:
    """{workers: [episodes/s per round]} for the `CONVERT_WORKERS` settings, measured interleaved over `repeats`
    rounds on a generated source of `episodes` episodes (`write_image_source`)."""
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    source = write_image_source(tempfile.mkdtemp(prefix="oat_convert_src_"), episodes, steps=steps, size=size)
    rates: dict[int, list[float]] = {w: [] for w in CONVERT_WORKERS}
    try:
        for _ in range(repeats):
            for workers in rates:
                rates[workers].append(convert_episodes_per_s(source, workers))
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return rates
