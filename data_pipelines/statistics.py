"""Per-dimension statistics of actions (and proprio), cached as JSON keyed by a fingerprint.

The JSON is the interface to `oat_jax.ActionNormalizer.from_stats` (see docs/DESIGN.md):
`{"action": {"min","max","mean","std","q01","q99": [D] floats, "count": int}, "proprio": {...} (optional),
"num_episodes": int, "num_transitions": int, "fingerprint": str, "split": str, ...}`.

"train" statistics use only the training episodes of the same seeded split as the loader.
The cache lives next to the dataset (its builder directory); where that is read-only (an installed package, a
shared bucket) it falls back to `$OAT_JAX_CACHE_DIR` or `~/.cache/oat_jax`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from data_pipelines import splits
from data_pipelines.rlds_reader import DatasetSpec, as_spec, builder_dir, num_episodes, read_trajectories

_CACHE_PREFIX = "dataset_statistics_"
_STATS_VERSION = 1  # bump when the statistics' definition changes, so old caches are ignored


def default_cache_dir() -> str:
    """Fallback cache directory: $OAT_JAX_CACHE_DIR, else ~/.cache/oat_jax."""
    return os.environ.get("OAT_JAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "oat_jax")


def dataset_fingerprint(spec: DatasetSpec) -> str:
    """SHA-256 of the dataset's metadata files and the names and sizes of its data shards."""
    directory = builder_dir(spec)
    h = hashlib.sha256()
    for name in ("dataset_info.json", "features.json"):
        path = tf.io.gfile.join(directory, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    for name in sorted(tf.io.gfile.listdir(directory)):
        if "-of-" in name:  # TFDS shards: <name>-<split>.<format>-00000-of-00004
            h.update(f"{name}:{tf.io.gfile.stat(tf.io.gfile.join(directory, name)).length}".encode())
    return h.hexdigest()


def _options(spec: DatasetSpec) -> dict:
    options = {"source_split": spec.source_split, "action_key": spec.action_key,
               "action_dims": list(spec.action_dims) if spec.action_dims is not None else None,
               "proprio_key": spec.proprio_key}
    if spec.action_keys:  # only when set, so the fingerprints (and caches) of plain vector actions stay the same
        options["action_keys"] = list(spec.action_keys)
    return options


def statistics_fingerprint(specs: Sequence[DatasetSpec], split: str, val_fraction: float, split_seed: int) -> str:
    """SHA-256 over the datasets' fingerprints and every option that changes the statistics."""
    key = {"version": _STATS_VERSION, "split": split, "val_fraction": float(val_fraction),
           "split_seed": int(split_seed),
           "datasets": [{"data": dataset_fingerprint(s), **_options(s)} for s in specs]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _summary(x: np.ndarray) -> dict:
    """Per-dimension statistics of x (N, D) as JSON-able lists."""
    x = x.astype(np.float64)
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)  # (D,), (D,)
    # q01/q99 (ours, openpi) are also written as p01/p99 (octo), so either project can read the file.
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "q01": q01.tolist(), "q99": q99.tolist(), "p01": q01.tolist(),
            "p99": q99.tolist(), "count": int(x.shape[0])}


def summarize_episodes(actions: Sequence[np.ndarray], split: str, val_fraction: float, split_seed: int,
                       proprio: Sequence[np.ndarray] = ()) -> dict:
    """The statistics dict of the module docstring (without "fingerprint") from the `split` episodes' actions, in
    episode order: each (T_i, D_a) as stored (float32), and optionally their proprio (T_i, D_p)."""
    dims = {a.shape[-1] for a in actions}
    if len(dims) != 1:
        raise ValueError(f"Datasets have different action dims {sorted(dims)}; select matching dims with "
                         "DatasetSpec.action_dims.")
    stats = {"action": _summary(np.concatenate(actions))}  # (N, D_a)
    if len(proprio):
        stats["proprio"] = _summary(np.concatenate(proprio))  # (N, D_p)
    stats.update(num_episodes=len(actions), num_transitions=stats["action"]["count"], split=split,
                 val_fraction=float(val_fraction), split_seed=int(split_seed))
    return stats


def compute_dataset_statistics(specs: Union[DatasetSpec, str, Sequence[Union[DatasetSpec, str]]],
                               split: str = "train", *, val_fraction: float = 0.1, split_seed: int = 0) -> dict:
    """One pass over the `split` episodes of every dataset (concatenated, unweighted); no cache."""
    specs = [as_spec(specs)] if isinstance(specs, (DatasetSpec, str)) else [as_spec(s) for s in specs]
    actions, proprio = [], []
    for spec in specs:
        ids = splits.split_episode_ids(num_episodes(spec), split, val_fraction, split_seed)
        obs_keys = {"proprio": spec.proprio_key} if spec.proprio_key is not None else {}
        for traj in read_trajectories(spec, ids, obs_keys=obs_keys).as_numpy_iterator():
            if not np.all(np.isfinite(traj["actions"])):
                raise ValueError(f"Episode {traj['episode_id']} of {spec.label} has NaN/Inf actions; "
                                 "fix the source data and re-convert it.")
            actions.append(traj["actions"])
            if obs_keys:
                proprio.append(np.asarray(traj["observation"]["proprio"]).reshape(len(traj["actions"]), -1))
    return summarize_episodes(actions, split, val_fraction, split_seed, proprio)


def _read_json(path: str) -> Optional[dict]:
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.load(f)
    except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError, OSError, ValueError):
        return None


def _write_json(directory: str, name: str, data: dict) -> Optional[str]:
    """Atomically write `data` to directory/name; None if the directory is not writable."""
    path = tf.io.gfile.join(directory, name)
    tmp = tf.io.gfile.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(tmp, "w") as f:
            json.dump(data, f, indent=1)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return path
    except (tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError, tf.errors.UnimplementedError,
            tf.errors.NotFoundError, OSError):
        try:
            tf.io.gfile.remove(tmp)
        except (tf.errors.OpError, OSError):
            pass
        return None


def cache_file_name(fingerprint: str) -> str:
    """File name of the statistics JSON for `fingerprint`."""
    return f"{_CACHE_PREFIX}{fingerprint[:24]}.json"


def store_train_statistics(builder_directory: str, stats: dict) -> Optional[str]:
    """Writes `stats` (`summarize_episodes` of the train split of the dataset at `builder_directory`, default
    DatasetSpec options) where `get_dataset_statistics` finds it, so training never recomputes them; returns the
    path (None if the directory is not writable). Call it once the dataset's files are final."""
    spec = DatasetSpec(path=builder_directory)
    fingerprint = statistics_fingerprint([spec], "train", stats["val_fraction"], stats["split_seed"])
    return _write_json(builder_directory, cache_file_name(fingerprint), {**stats, "fingerprint": fingerprint})


def cache_dirs(specs: Sequence[DatasetSpec], cache_dir: Optional[str] = None) -> list[str]:
    """Where the statistics JSON is looked up, in order: next to a single dataset, then the cache directory."""
    return ([builder_dir(specs[0])] if len(specs) == 1 else []) + [cache_dir or default_cache_dir()]


def get_dataset_statistics(specs: Union[DatasetSpec, str, Sequence[Union[DatasetSpec, str]]], split: str = "train",
                           *, val_fraction: float = 0.1, split_seed: int = 0, cache_dir: Optional[str] = None,
                           force_recompute: bool = False) -> dict:
    """Statistics of the `split` episodes, read from the cache when present, else computed and cached.

    Args:
      specs: a DatasetSpec or builder directory (or several: statistics of their concatenation).
      split / val_fraction / split_seed: the episode split, identical to `make_chunk_dataset`'s.
      cache_dir: fallback cache directory (default `default_cache_dir()`).
      force_recompute: ignore any cached file.
    Returns:
      The statistics dict described in the module docstring, with "fingerprint" and "cache_path" (where it was
      read from or written to; None if nothing was writable).
    """
    specs = [as_spec(specs)] if isinstance(specs, (DatasetSpec, str)) else [as_spec(s) for s in specs]
    fingerprint = statistics_fingerprint(specs, split, val_fraction, split_seed)
    name, directories = cache_file_name(fingerprint), cache_dirs(specs, cache_dir)
    if not force_recompute:
        for directory in directories:
            path = tf.io.gfile.join(directory, name)
            cached = _read_json(path)
            if cached is not None and cached.get("fingerprint") == fingerprint:
                return {**cached, "cache_path": path}
    stats = compute_dataset_statistics(specs, split, val_fraction=val_fraction, split_seed=split_seed)
    stats["fingerprint"] = fingerprint
    written = None
    for directory in directories:
        written = _write_json(directory, name, stats)
        if written is not None:
            break
    return {**stats, "cache_path": written}
