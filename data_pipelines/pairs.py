"""tf.data pipeline of policy training pairs: (observation history, action chunk) read from RLDS episodes of one
dataset or a weighted mixture (a dataset is a mixture of one; every pair carries its member's "dataset_index").

Each frame is stored once on disk; the K-frame observation histories and the H-step action chunks are built in the
pipeline per episode (`loader.frame_dataset`), then per pair: state fields concatenated, camera images decoded
(after the shuffle buffer, so the buffer holds encoded bytes) and optionally randomly cropped, the instruction
mapped to an id. Memory is bounded by the episode and frame shuffle buffers, not by the dataset's size.

The pair order is a fixed function of the seed: `skip` pairs are dropped before any image is decoded, so a run
resumed at step s with skip = s * batch continues with exactly the pairs an uninterrupted run would have used.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from data_pipelines import loader
from data_pipelines.rlds_reader import DatasetSpec, read_trajectories

UNKNOWN_INSTRUCTION = 0  # id of an instruction outside the vocabulary; known instructions are 1..len(vocabulary)


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """What a policy observes, as RLDS step key paths.

    state_keys: fields concatenated (in this order, each flattened) into the (K, D_s) "state" history; () = none.
    image_keys: camera images stacked into the (K, cams, h, w, c) uint8 "image" history; () = none. The cameras must
      share one image shape.
    language_key: step key path of the instruction ('' = no language input), or "episode_metadata/<key>".
    """

    state_keys: tuple[str, ...] = ()
    image_keys: tuple[str, ...] = ()
    language_key: str = ""

    def __post_init__(self):
        for name in ("state_keys", "image_keys"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not self.state_keys and not self.image_keys:
            raise ValueError("A policy needs an observation: give at least one state key or one camera "
                             "(config.data.state_keys / config.data.image_keys).")
        names = [k.split("/")[-1] for k in self.state_keys + self.image_keys]
        if len(set(names)) != len(names):
            raise ValueError(f"state_keys={self.state_keys} and image_keys={self.image_keys}: every key needs a "
                             f"distinct last path component (observation fields are named by it).")

    def reader_spec(self, spec: DatasetSpec) -> DatasetSpec:
        """`spec` reading these observation fields (and this language key)."""
        extra = {"language_key": self.language_key} if self.language_key else {}
        return dataclasses.replace(spec, obs_keys=self.state_keys + self.image_keys, proprio_key=None, **extra)


def _episode_ids(spec: DatasetSpec, split: str, val_fraction: float, split_seed: int):
    return loader.process_episode_ids(spec, split, val_fraction=val_fraction, split_seed=split_seed)


def _members(datasets: loader.MixtureLike) -> list[DatasetSpec]:
    return loader.normalize_mixture(datasets)


def frame_values(datasets: loader.MixtureLike, obs: ObservationSpec, split: str = "train", *,
                 val_fraction: float = 0.1, split_seed: int = 0) -> dict[str, np.ndarray]:
    """Every frame of `split` of every member, each once (the normalizers' data): {"actions": (N, D_a) float32,
    "episode_id": (N,) int64, "dataset_index": (N,) int32, "state": (N, D_s) float32 concatenated state fields
    (only with state keys)}."""
    names = {k.split("/")[-1]: k for k in obs.state_keys}
    parts: dict[str, list] = {"actions": [], "episode_id": [], "dataset_index": [], "state": []}
    for index, spec in enumerate(_members(datasets)):
        trajectories = read_trajectories(spec, _episode_ids(spec, split, val_fraction, split_seed), obs_keys=names)
        for traj in trajectories.as_numpy_iterator():
            steps = len(traj["actions"])
            parts["actions"].append(np.asarray(traj["actions"], np.float32))
            parts["episode_id"].append(np.full(steps, traj["episode_id"], np.int64))
            parts["dataset_index"].append(np.full(steps, index, np.int32))
            if names:
                parts["state"].append(np.concatenate(
                    [np.asarray(traj["observation"][n], np.float32).reshape(steps, -1) for n in names], axis=1))
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def instruction_vocabulary(datasets: loader.MixtureLike, obs: ObservationSpec, split: str = "train", *,
                           val_fraction: float = 0.1, split_seed: int = 0) -> list[str]:
    """The distinct instructions of `split` over every member, sorted (id i + 1 is vocabulary[i]; empty strings are
    left out)."""
    if not obs.language_key:
        return []
    seen = set()
    for spec in _members(datasets):
        trajectories = read_trajectories(obs.reader_spec(spec), _episode_ids(spec, split, val_fraction, split_seed),
                                         with_language=True)
        for traj in trajectories.map(lambda t: tf.unique(t["language"])[0]).as_numpy_iterator():
            seen.update(s.decode("utf-8") for s in traj)
    return sorted(s for s in seen if s)


def count_pairs(datasets: loader.MixtureLike, split: str, *, val_fraction: float = 0.1,
                split_seed: int = 0) -> int:
    """Number of (observation, chunk) pairs of `split` over every member: one per step of its episodes."""
    total = 0
    for spec in _members(datasets):
        trajectories = read_trajectories(spec, _episode_ids(spec, split, val_fraction, split_seed))
        total += int(trajectories.reduce(np.int64(0),
                                         lambda n, t: n + tf.cast(tf.shape(t["actions"])[0], tf.int64)))
    return total


def random_resized_crop(image: tf.Tensor, min_area: float, seed: tf.Tensor) -> tf.Tensor:
    """(..., h, w, c) uint8 -> the same shape: one random crop of area fraction in [min_area, 1] (aspect kept)
    resized back, shared by all leading axes (the frames of a history see the same crop)."""
    shape = tf.shape(image)
    h, w = shape[-3], shape[-2]
    scale = tf.sqrt(tf.random.stateless_uniform([], seed, min_area, 1.0))
    ch = tf.maximum(tf.cast(tf.cast(h, tf.float32) * scale, tf.int32), 1)
    cw = tf.maximum(tf.cast(tf.cast(w, tf.float32) * scale, tf.int32), 1)
    offsets = tf.random.stateless_uniform([2], seed + 1, 0.0, 1.0)
    top = tf.cast(offsets[0] * tf.cast(h - ch + 1, tf.float32), tf.int32)
    left = tf.cast(offsets[1] * tf.cast(w - cw + 1, tf.float32), tf.int32)
    flat = tf.reshape(image, tf.concat([[-1], shape[-3:]], 0))
    crop = flat[:, top:top + ch, left:left + cw, :]
    resized = tf.image.resize(crop, [h, w], method="bilinear", antialias=True)
    return tf.reshape(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), shape)


def make_pair_dataset(datasets: loader.MixtureLike, obs: ObservationSpec, *, split: str, horizon: int, n_obs_steps: int,
                      batch_size: int, shuffle: bool, repeat: bool, seed: int = 0, process_index: int = 0,
                      process_count: int = 1, val_fraction: float = 0.1, split_seed: int = 0,
                      shuffle_buffer: int = 10_000, episode_shuffle_buffer: int = 64,
                      instructions: Sequence[str] = (), crop_min_area: float = 1.0, skip: int = 0,
                      keep: Optional[np.ndarray] = None, drop_remainder: bool = True) -> tf.data.Dataset:
    """Batches of (observation history, action chunk) pairs of one RLDS dataset or a weighted mixture.

    Args:
      datasets: a DatasetSpec (its action fields; `obs` chooses the observation fields), a builder directory, or
        [(spec, weight), ...]: shuffled streams sample the members by weight; a one-pass read (shuffle=False,
        repeat=False) gives the members one after the other.
      obs: the state fields, cameras and instruction to read.
      split / horizon / n_obs_steps: "train" | "val" | "all" by episode; H; K >= 1.
      batch_size: this process's rows per batch.
      shuffle / repeat / seed: seeded episode + pair shuffling and endless repetition; the order is a fixed
        function of the seed.
      process_index / process_count: this process's disjoint block of the split's episodes.
      shuffle_buffer / episode_shuffle_buffer: pairs and episodes held for shuffling (the memory bound).
      instructions: the instruction vocabulary (`instruction_vocabulary`); id 0 is an unknown instruction.
      crop_min_area: < 1 randomly crops each training image history to an area fraction in [crop_min_area, 1] and
        resizes it back (the same crop for its K frames); 1 = no augmentation.
      skip: pairs dropped from the start of the stream before decoding (exact resume: steps * batch_size).
      keep: (num_pairs,) bool over the unshuffled split's pairs: keep only those (an evaluation subset).
      drop_remainder: static batch shapes (training) or a last partial batch (a one-pass read).
    Returns:
      Dataset of {"actions": (B, H, D_a) float32 raw, "state": (B, K, D_s) float32 raw (with state keys),
      "image": (B, K, cams, h, w, c) uint8 (with cameras), "language": (B,) int32 (with a language key),
      "episode_id": (B,) int64, "dataset_index": (B,) int32 (the member)}.
    """
    if n_obs_steps < 1:
        raise ValueError(f"n_obs_steps={n_obs_steps} must be >= 1.")
    if not 0.0 < crop_min_area <= 1.0:
        raise ValueError(f"crop_min_area={crop_min_area} must be in (0, 1] (1 = no crop).")
    specs = _members(datasets)
    streams = [loader.frame_dataset(
        obs.reader_spec(spec), i, split=split, horizon=horizon, shuffle=shuffle, repeat=repeat,
        seed=seed + 7919 * process_index + 104729 * i, process_index=process_index, process_count=process_count,
        val_fraction=val_fraction, split_seed=split_seed, n_obs_steps=n_obs_steps,
        with_language=bool(obs.language_key), with_episode_ids=True, shuffle_buffer=shuffle_buffer,
        episode_shuffle_buffer=episode_shuffle_buffer, cache=False, num_parallel_calls=tf.data.AUTOTUNE)
        for i, spec in enumerate(specs)]
    frames, images = streams[0]
    for spec, (member, member_images) in zip(specs[1:], streams[1:]):
        if member.element_spec != frames.element_spec or {k: f.shape for k, f in member_images.items()} != {
                k: f.shape for k, f in images.items()}:
            raise ValueError(f"The mixture's members hold different observations or actions: {specs[0].label}: "
                             f"{frames.element_spec} vs {spec.label}: {member.element_spec}; mix datasets with the "
                             f"same state fields, camera shapes and action size.")
    if len(specs) > 1 and (shuffle or repeat):
        total = sum(spec.weight for spec in specs)
        frames = tf.data.Dataset.sample_from_datasets([m for m, _ in streams],
                                                      weights=[spec.weight / total for spec in specs], seed=seed,
                                                      stop_on_empty_dataset=False)
    elif len(specs) > 1:
        for member, _ in streams[1:]:
            frames = frames.concatenate(member)
    if keep is not None:
        mask = tf.constant(np.asarray(keep, bool))

        def kept(index, frame):
            return mask[index]

        def without_index(index, frame):
            return frame

        frames = frames.enumerate().filter(kept).map(without_index)
    frames = frames.enumerate().skip(int(skip))
    state_names = [k.split("/")[-1] for k in obs.state_keys]
    camera_names = [k.split("/")[-1] for k in obs.image_keys]
    missing = [n for n in camera_names if n not in images]
    if missing:
        raise ValueError(f"image_keys {[k for k in obs.image_keys if k.split('/')[-1] in missing]} of {specs[0].label} "
                         f"are not Image features; give their keys in state_keys, or cameras in image_keys.")
    table = None
    if obs.language_key:
        vocab = list(instructions)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(vocab or [""], tf.string),
                                                tf.constant(list(range(1, len(vocab) + 1)) or [0], tf.int32)),
            default_value=UNKNOWN_INSTRUCTION)
    augment = crop_min_area < 1.0

    def to_pair(index, frame):
        out = {"actions": frame["actions"], "episode_id": frame["episode_id"], "dataset_index": frame["dataset_index"]}
        observation = frame["observation"]
        if state_names:  # (K, ...) fields -> (K, D_s)
            out["state"] = tf.concat([tf.reshape(tf.cast(observation[n], tf.float32), [n_obs_steps, -1])
                                      for n in state_names], axis=-1)
        if camera_names:
            cams = []
            for name in camera_names:
                height, width, channels = images[name].shape
                decoded = tf.map_fn(lambda s: tf.io.decode_image(s, channels=channels or 0, expand_animations=False),
                                    observation[name], fn_output_signature=tf.uint8)  # (K, h, w, c)
                cams.append(tf.ensure_shape(decoded, [n_obs_steps, height, width, channels]))
            image = tf.stack(cams, axis=1)  # (K, cams, h, w, c)
            if augment:
                image = random_resized_crop(image, crop_min_area, tf.stack([tf.cast(seed, tf.int64), index]))
            out["image"] = image
        if table is not None:
            out["language"] = table.lookup(frame["language"])
        return out

    shapes = {images[n].shape for n in camera_names}
    if len(shapes) > 1:
        raise ValueError(f"image_keys={obs.image_keys}: the cameras differ in image shape {sorted(shapes)}; resize "
                         f"them to one (h, w, c) when writing the dataset.")
    pairs = frames.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = pairs.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    return batches.prefetch(tf.data.AUTOTUNE)
