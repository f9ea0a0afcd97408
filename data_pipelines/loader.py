"""tf.data pipeline: RLDS episodes -> shuffled batches of action chunks (single dataset or weighted mixture).

Trajectory-level stage (per episode): read, optional cache, episode shuffle, repeat, chunk with gathers.
Frame-level stage (per chunk): unbatch, shuffle, mix datasets, decode images (only if asked), batch, prefetch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Union

import tensorflow as tf

import os

from data_pipelines import chunking, oxe, splits
from data_pipelines.rlds_reader import DatasetSpec, as_spec, image_features, num_episodes, read_trajectories

__all__ = ["DatasetSpec", "dataset_label", "make_chunk_dataset", "normalize_mixture", "parse_mixture",
           "process_episode_ids"]

DatasetLike = Union[DatasetSpec, str]
MixtureLike = Union[DatasetLike, Sequence[Union[DatasetLike, tuple[DatasetLike, float]]]]


def normalize_mixture(datasets: MixtureLike) -> list[DatasetSpec]:
    """A list of DatasetSpecs from one spec/path, a list of them, or Open-X style [(spec_or_path, weight), ...]."""
    if isinstance(datasets, (DatasetSpec, str)):
        return [as_spec(datasets)]
    specs = []
    for item in datasets:
        if isinstance(item, tuple):
            dataset, weight = item
            specs.append(dataclasses.replace(as_spec(dataset), weight=float(weight)))
        else:
            specs.append(as_spec(item))
    if not specs:
        raise ValueError("Empty dataset mixture; pass at least one DatasetSpec or builder directory.")
    return specs


def dataset_label(spec: DatasetSpec) -> str:
    """Short name of a dataset for metrics and per-dataset statistics: its TFDS name without the version, or the
    base name of its builder directory (a versioned `<name>/<x.y.z>` directory gives `<name>`)."""
    if spec.name:
        return oxe.base_name(spec.name)
    path = os.path.normpath(spec.path.rstrip("/"))
    base = os.path.basename(path)
    if base.count(".") == 2 and base.replace(".", "").isdigit():
        base = os.path.basename(os.path.dirname(path))
    return base


def _split_weight(entry: str) -> tuple[str, float | None]:
    """'bridge_orig:2' -> ('bridge_orig', 2.0); 'name:1.0.0' (a version) and 'gs://b/d' keep their colon."""
    head, sep, tail = entry.rpartition(":")
    if sep and head and "/" not in tail:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return entry, None


def is_mixture(text: str | None) -> bool:
    """True for a mixture 'name_or_path:weight,...' (two or more entries, or one with a weight); False for one
    dataset's path or name ('name:1.0.0' and 'gs://...' keep their colon)."""
    text = (text or "").strip()
    return "," in text or (bool(text) and _split_weight(text)[1] is not None)


def parse_mixture(text: str, data_dir: Optional[str] = None, action_keys: str | tuple[str, ...] = (),
                  flag: str = "config.data.path") -> list[DatasetSpec]:
    """DatasetSpecs with weights from 'name_or_path:weight,name_or_path:weight,...'.

    Each entry is an RLDS builder directory (a path holding dataset_info.json, or a gs:// URL) or a TFDS dataset
    name ('name' or 'name:x.y.z') read from `data_dir` with its registered layout (`data_pipelines.oxe`); the
    weight (default 1) is the entry's share of the sampled chunks after normalizing over the mixture. `action_keys`
    applies to the members without a registered layout. Raises ValueError naming `flag` for an empty mixture, a
    weight <= 0, or a label used twice (labels: `dataset_label`).
    """
    specs, labels = [], {}
    for entry in (e.strip() for e in (text or "").split(",")):
        if not entry:
            continue
        target, weight = _split_weight(entry)
        if weight is not None and not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"{flag}: the weight of {target!r} is {weight}; weights must be finite and > 0 (drop "
                             f"the entry to leave a dataset out).")
        is_path = os.path.isdir(target) or "://" in target or os.sep in target
        if is_path:
            spec = DatasetSpec(path=target, action_keys=action_keys)
        else:
            keys = () if oxe.layout_of(target) is not None else action_keys
            spec = oxe.spec_for(target, data_dir, action_keys=keys)
        spec = dataclasses.replace(spec, weight=1.0 if weight is None else weight)
        label = dataset_label(spec)
        if label in labels:
            raise ValueError(f"{flag}: {entry!r} and {labels[label]!r} are both named {label!r}; per-dataset "
                             f"statistics and metrics are keyed by that name, so mix distinct datasets.")
        labels[label] = entry
        specs.append(spec)
    if not specs:
        raise ValueError(f"{flag} is empty; give 'name_or_path:weight,...' with at least one dataset.")
    if not math.isfinite(sum(spec.weight for spec in specs)):
        raise ValueError(f"{flag}: the weights add up to more than a float can hold; give them on a smaller scale "
                         f"(only their ratios matter).")
    return specs


def process_episode_ids(spec: DatasetSpec, split: str, *, val_fraction: float = 0.1, split_seed: int = 0,
                        process_index: int = 0, process_count: int = 1):
    """(n,) int64 episode indices of `split` that process `process_index` of `process_count` reads."""
    ids = splits.split_episode_ids(num_episodes(spec), split, val_fraction, split_seed)
    return splits.shard_episode_ids(ids, process_index, process_count)


def _decode_images(frame: dict, features: dict) -> dict:
    """Decode the encoded Image observations of one frame: (K,) string -> (K, H, W, C) uint8."""
    observation = dict(frame["observation"])
    for name, feature in features.items():
        height, width, channels = feature.shape
        decode = lambda s: tf.io.decode_image(s, channels=channels or 0, expand_animations=False)  # noqa: E731
        decoded = tf.map_fn(decode, observation[name], fn_output_signature=tf.uint8)  # (K, H, W, C)
        observation[name] = tf.ensure_shape(decoded, observation[name].shape.concatenate([height, width, channels]))
    return {**frame, "observation": observation}


def frame_dataset(spec: DatasetSpec, index: int, *, split: str, horizon: int, shuffle: bool, repeat: bool,
                   seed: int, process_index: int, process_count: int, val_fraction: float, split_seed: int,
                   n_obs_steps: int, with_language: bool, with_episode_ids: bool, shuffle_buffer: int,
                   episode_shuffle_buffer: int, cache: bool, num_parallel_calls: int) -> tuple[tf.data.Dataset, dict]:
    """One dataset's unbatched chunks (the arguments of `make_chunk_dataset`; `index` fills "dataset_index") and
    its Image observation features {name: feature} (the images stay encoded bytes)."""
    ids = process_episode_ids(spec, split, val_fraction=val_fraction, split_seed=split_seed,
                              process_index=process_index, process_count=process_count)
    obs_keys = {}
    if n_obs_steps > 0:
        obs_keys = {path.split("/")[-1]: path for path in spec.obs_keys}
        if len(obs_keys) != len(spec.obs_keys):
            raise ValueError(f"obs_keys={spec.obs_keys} of {spec.label} end in the same name twice; "
                             "observation fields are named by their last path component.")
        if spec.proprio_key is not None:
            obs_keys["proprio"] = spec.proprio_key
    trajectories = read_trajectories(spec, ids, obs_keys=obs_keys, with_language=with_language,
                                     num_parallel_calls=num_parallel_calls)
    if cache:
        trajectories = trajectories.cache()
    if shuffle:
        trajectories = trajectories.shuffle(min(episode_shuffle_buffer, len(ids)), seed=seed,
                                            reshuffle_each_iteration=True)
    if repeat:
        trajectories = trajectories.repeat()

    def to_chunks(traj):
        frames = chunking.chunk_actions(traj["actions"], horizon)  # (T, H, D_a), (T, H)
        num_steps = tf.shape(traj["actions"])[0]
        if "observation" in traj:
            frames["observation"] = {k: chunking.observation_history(v, n_obs_steps)  # (T, K, ...)
                                     for k, v in traj["observation"].items()}
        if with_language:
            frames["language"] = traj["language"]  # (T,)
        if with_episode_ids:
            frames["dataset_index"] = tf.fill([num_steps], tf.constant(index, tf.int32))  # (T,)
            frames["episode_id"] = tf.fill([num_steps], traj["episode_id"])  # (T,)
            frames["timestep"] = tf.range(num_steps)  # (T,)
        return frames

    frames = trajectories.map(to_chunks, num_parallel_calls=num_parallel_calls, deterministic=True).unbatch()
    if shuffle:
        frames = frames.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return frames, image_features(spec, obs_keys)


def make_chunk_dataset(
    datasets: MixtureLike,
    split: str = "train",
    horizon: int = 32,
    batch_size: int = 64,
    *,
    shuffle: bool = True,
    repeat: bool = True,
    seed: int = 0,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    n_obs_steps: int = 0,
    with_language: bool = False,
    decode_images: bool = False,
    with_episode_ids: bool = False,
    shuffle_buffer: int = 10_000,
    episode_shuffle_buffer: int = 256,
    cache: bool = False,
    drop_remainder: bool = True,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Batches of action chunks from one RLDS dataset or a weighted mixture.

    Args:
      datasets: a DatasetSpec, a builder directory, a list of them, or [(spec_or_path, weight), ...].
      split: "train" | "val" | "all", by episode (see `data_pipelines.splits`), same split as the statistics.
      horizon: H, actions per chunk.
      batch_size: this process's local batch size B.
      shuffle / repeat / seed: episode + frame shuffling (seeded), endless repetition.
      process_index / process_count: this process's shard (default 0 / 1; training passes jax.process_index()
        and jax.process_count()). Each process reads a disjoint contiguous block of the split's episodes.
        Without `repeat`, processes may yield different numbers of batches.
      val_fraction / split_seed: the episode split.
      n_obs_steps: K > 0 adds "observation" {name: (B, K, ...)} from DatasetSpec.obs_keys (+ "proprio"), the
        first frame repeated at an episode start; 0 returns actions only.
      with_language: adds "language" (B,) string from DatasetSpec.language_key.
      decode_images: decode Image observations to uint8 (B, K, H, W, C); otherwise they stay encoded bytes.
      with_episode_ids: adds "dataset_index", "episode_id", "timestep" (B,) for debugging and tests.
      shuffle_buffer / episode_shuffle_buffer: frame and episode shuffle buffer sizes.
      cache: keep the parsed trajectories in memory after the first pass (small datasets).
      drop_remainder: drop the last incomplete batch (static shapes for jit).
    Returns:
      Dataset of {"actions": (B, H, D_a) float32, "action_pad_mask": (B, H) bool (True = real step), ...}.
    """
    if horizon < 1 or batch_size < 1:
        raise ValueError(f"horizon={horizon} and batch_size={batch_size} must both be >= 1.")
    if n_obs_steps < 0:
        raise ValueError(f"n_obs_steps={n_obs_steps} must be >= 0 (0 = actions only).")
    process_index = 0 if process_index is None else int(process_index)
    process_count = 1 if process_count is None else int(process_count)
    specs = normalize_mixture(datasets)
    members = [
        frame_dataset(spec, i, split=split, horizon=horizon, shuffle=shuffle, repeat=repeat,
                       seed=seed + 7919 * process_index + 104729 * i, process_index=process_index,
                       process_count=process_count, val_fraction=val_fraction, split_seed=split_seed,
                       n_obs_steps=n_obs_steps, with_language=with_language, with_episode_ids=with_episode_ids,
                       shuffle_buffer=shuffle_buffer, episode_shuffle_buffer=episode_shuffle_buffer, cache=cache,
                       num_parallel_calls=num_parallel_calls)
        for i, spec in enumerate(specs)]
    frames = members[0][0]
    if len(members) > 1:
        first = frames.element_spec
        for spec, (member, _) in zip(specs[1:], members[1:]):
            if member.element_spec != first:
                raise ValueError(
                    f"Mixture members yield different chunk specs: {specs[0].label}: {first} vs {spec.label}: "
                    f"{member.element_spec}. Make them match (DatasetSpec.action_dims, the same obs names).")
        total = sum(spec.weight for spec in specs)
        frames = tf.data.Dataset.sample_from_datasets(
            [member for member, _ in members], weights=[spec.weight / total for spec in specs], seed=seed,
            stop_on_empty_dataset=False)
    images = members[0][1]
    if decode_images and images:
        frames = frames.map(lambda f: _decode_images(f, images), num_parallel_calls=num_parallel_calls)
    batches = frames.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=num_parallel_calls,
                           deterministic=True)
    return batches.prefetch(tf.data.AUTOTUNE)
