"""Open RLDS datasets (TFDS builder directories) and read episodes as trajectory dicts.

A trajectory is one episode with every step field stacked on a leading time axis T:
`{"episode_id": () int64, "actions": (T, D_a) float32, "observation": {name: (T, ...)}, "language": (T,) string}`
(`observation` and `language` only when asked for). Images stay encoded (`tf.string`); they are decoded, if at
all, per frame after chunking.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

_EPISODE_METADATA = "episode_metadata/"
_MAX_STEPS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where one RLDS dataset lives and which step fields to read. Give `path` or `name` (+ `data_dir`)."""

    path: Optional[str] = None  # RLDS builder directory holding dataset_info.json (local path or gs://)
    name: Optional[str] = None  # TFDS name, "name" or "name:version", looked up in data_dir
    data_dir: Optional[str] = None  # TFDS data directory for `name` (None: the TFDS default)
    weight: float = 1.0  # sampling weight of this dataset in a mixture (normalised over the mixture)
    source_split: str = "train"  # TFDS split holding the episodes; train/val are carved from it by episode
    action_key: str = "action"  # "/"-separated key path of the action inside each step
    # Fields under `action_key` concatenated in this order into the action (a dict action, e.g. RT-1's
    # world_vector, rotation_delta, gripper_closedness_action); integer fields are cast, 0-d fields are one dim.
    # () = `action_key` itself is the (D_a,) vector.
    action_keys: tuple[str, ...] = ()
    action_dims: Optional[tuple[int, ...]] = None  # keep only these action dimensions (None: all)
    obs_keys: tuple[str, ...] = ()  # step key paths returned under "observation" when n_obs_steps > 0
    proprio_key: Optional[str] = None  # step key path of proprio (statistics, and observation["proprio"])
    language_key: str = "language_instruction"  # step key path, or "episode_metadata/<key>" for per-episode text

    def __post_init__(self):
        if (self.path is None) == (self.name is None):
            raise ValueError(f"DatasetSpec needs exactly one of path= (a builder directory) or name= "
                             f"(with data_dir=); got path={self.path!r}, name={self.name!r}.")
        if self.weight <= 0:
            raise ValueError(f"DatasetSpec.weight={self.weight} must be > 0; drop the dataset instead.")
        if self.action_dims is not None:
            object.__setattr__(self, "action_dims", tuple(int(d) for d in self.action_dims))
        object.__setattr__(self, "obs_keys", tuple(self.obs_keys))
        keys = self.action_keys.split(",") if isinstance(self.action_keys, str) else self.action_keys
        object.__setattr__(self, "action_keys", tuple(k.strip() for k in keys if k.strip()))

    @property
    def label(self) -> str:
        """Human-readable name for error messages."""
        return self.path if self.path is not None else f"{self.name} in {self.data_dir or 'the TFDS data dir'}"


def as_spec(dataset: "DatasetSpec | str") -> DatasetSpec:
    """A DatasetSpec, or a builder directory path turned into one."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    if isinstance(dataset, str):
        return DatasetSpec(path=dataset)
    raise TypeError(f"Expected a DatasetSpec or a builder directory path, got {type(dataset).__name__}.")


@functools.lru_cache(maxsize=32)
def _open_builder(path: Optional[str], name: Optional[str], data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
    if path is not None:
        if not tf.io.gfile.exists(tf.io.gfile.join(path, "dataset_info.json")):
            raise FileNotFoundError(
                f"{path} is not an RLDS/TFDS builder directory (no dataset_info.json). Point DatasetSpec.path at "
                "the version folder (e.g. .../my_dataset/1.0.0) or convert your data with "
                "`python -m data_pipelines.convert`.")
        return tfds.builder_from_directory(path)
    return tfds.builder_from_directory(local_builder_dir(name, data_dir))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def local_builder_dir(name: str, data_dir: Optional[str]) -> str:
    """The builder directory `<data_dir>/<name>/<version>` of a TFDS name ("name" = its newest prepared version,
    or "name:1.0.0"). Datasets are read from there only, never looked up or downloaded over the network (TFDS's
    registered builders of the same name would fetch their metadata from the internet).

    Raises FileNotFoundError naming the directory it looked in and the flags to set.
    """
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    base, _, version = name.partition(":")
    root = tf.io.gfile.join(data_dir, base)
    if version:
        candidates = [version]
    else:
        entries = tf.io.gfile.listdir(root) if tf.io.gfile.isdir(root) else []
        candidates = sorted((e.rstrip("/") for e in entries if re.fullmatch(r"\d+\.\d+\.\d+/?", e)),
                            key=_version_key, reverse=True)
    for candidate in candidates:
        path = tf.io.gfile.join(root, candidate)
        if tf.io.gfile.exists(tf.io.gfile.join(path, "dataset_info.json")):
            return path
    looked = tf.io.gfile.join(root, version or "<version>")
    raise FileNotFoundError(
        f"Dataset {name!r}: no prepared builder directory at {looked} (with dataset_info.json). Datasets are read "
        f"offline only: put the prepared dataset there (--config.data.data_dir={data_dir}), or point "
        f"--config.data.path at its version folder.")


def open_builder(spec: DatasetSpec) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `spec` (cached per location)."""
    return _open_builder(spec.path, spec.name, spec.data_dir)


def builder_dir(spec: DatasetSpec) -> str:
    """The directory holding the dataset's files (dataset_info.json, tfrecords)."""
    return str(open_builder(spec).data_dir)


def num_episodes(spec: DatasetSpec) -> int:
    """Number of episodes in `spec.source_split`."""
    builder = open_builder(spec)
    if spec.source_split not in builder.info.splits:
        raise ValueError(f"{spec.label} has no split {spec.source_split!r}; available: "
                         f"{sorted(builder.info.splits.keys())}. Set DatasetSpec.source_split.")
    return int(builder.info.splits[spec.source_split].num_examples)


def _is_dict(node: Any) -> bool:
    return isinstance(node, (Mapping, tfds.features.FeaturesDict))


def _lookup(tree: Mapping[str, Any], key_path: str, what: str, spec: DatasetSpec) -> Any:
    """tree[a][b] for key_path "a/b" (dicts of tensors or FeaturesDicts); KeyError listing the fields."""
    node = tree
    for part in key_path.split("/"):
        if not _is_dict(node) or part not in node.keys():
            available = sorted(_flat_keys(tree))
            raise KeyError(f"{what}={key_path!r} is not a field of {spec.label}; available fields: {available}. "
                           f"Set DatasetSpec.{what} to one of them.")
        node = node[part]
    return node


def _flat_keys(tree: Any, prefix: str = "") -> list[str]:
    if not _is_dict(tree):
        return [prefix]
    keys = []
    for k, v in tree.items():
        keys += _flat_keys(v, f"{prefix}{k}/" if _is_dict(v) else f"{prefix}{k}")
    return keys


def _is_image(feature: tfds.features.FeatureConnector) -> bool:
    return isinstance(feature, tfds.features.Image)


def _skip_image_decoders(feature: tfds.features.FeatureConnector) -> Any:
    """Decoder tree that keeps every Image feature as its encoded bytes."""
    if _is_image(feature):
        return tfds.decode.SkipDecoding()
    if isinstance(feature, tfds.features.Sequence):  # tfds.features.Dataset is a Sequence
        return _skip_image_decoders(feature.feature)
    if isinstance(feature, tfds.features.FeaturesDict):
        children = {k: _skip_image_decoders(v) for k, v in feature.items()}
        return {k: v for k, v in children.items() if v is not None} or None
    return None


def image_features(spec: DatasetSpec, keys: Mapping[str, str]) -> dict[str, tfds.features.FeatureConnector]:
    """The Image features among `keys` (output name -> step key path)."""
    step_features = open_builder(spec).info.features["steps"].feature
    out = {}
    for out_name, key_path in keys.items():
        if key_path.startswith(_EPISODE_METADATA):
            continue
        feature = _lookup(step_features, key_path, "obs_keys", spec)
        if _is_image(feature):
            out[out_name] = feature
    return out


def composed_action_dim(spec: DatasetSpec, step_features: Any) -> int:
    """D_a of the action `spec` reads: the (D_a,) field at `action_key`, or the fields `action_keys` under it
    concatenated. Raises ValueError naming the fields and the flag when the action is a dict and no keys are given,
    or a chosen field is not 0-d / 1-d."""
    feature = _lookup(step_features, spec.action_key, "action_key", spec)
    if not spec.action_keys:
        if _is_dict(feature):
            fields = {k: tuple(v.shape) for k, v in sorted(_flat_items(feature))}
            raise ValueError(
                f"The action ({spec.action_key!r}) of {spec.label} is a dict with fields {fields}; choose the ones to "
                f"concatenate, in order, with --config.data.action_keys=a,b,... (DatasetSpec.action_keys), e.g. "
                f"--config.data.action_keys={','.join(k for k, shp in fields.items() if len(shp) <= 1)}.")
        if len(feature.shape) != 1:
            raise ValueError(f"action_key={spec.action_key!r} of {spec.label} has per-step shape {feature.shape}; it "
                             "must be a vector (D_a,). Point action_key at a 1-D field (--config.data.action_key).")
        return int(feature.shape[0])
    dim = 0
    for key in spec.action_keys:
        part = _lookup(feature, key, "action_keys", spec)
        if _is_dict(part) or len(part.shape) > 1:
            raise ValueError(f"action_keys entry {key!r} of {spec.label} has per-step shape "
                             f"{getattr(part, 'shape', 'dict')}; each must be a scalar or a vector.")
        dim += int(part.shape[0]) if len(part.shape) == 1 else 1
    return dim


def _flat_items(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        out += _flat_items(v, f"{prefix}{k}/") if _is_dict(v) else [(f"{prefix}{k}", v)]
    return out


def read_trajectories(spec: DatasetSpec, episode_ids: Sequence[int], *, obs_keys: Mapping[str, str] = {},
                      with_language: bool = False,
                      num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Episodes `episode_ids` of `spec.source_split`, in index order, as trajectory dicts.

    Only the range [min(ids), max(ids)] of the split is read from disk; the file order (not TFDS's default
    interleaving) defines the episode index, so an index names the same episode in every process.

    Args:
      spec: the dataset.
      episode_ids: (n,) int indices into the source split (n >= 1).
      obs_keys: output name -> step key path of each observation field to return (encoded images stay bytes).
      with_language: also return the instruction (T,) string from `spec.language_key`.
    Returns:
      Dataset of {"episode_id": () int64, "actions": (T, D_a) float32,
                  ["observation": {name: (T, ...)}], ["language": (T,) string]}; empty episodes are skipped.
    """
    ids = np.unique(np.asarray(episode_ids, dtype=np.int64))
    if ids.size == 0:
        raise ValueError(f"No episodes to read from {spec.label}; check the split and the process count.")
    total = num_episodes(spec)
    if ids[0] < 0 or ids[-1] >= total:
        raise ValueError(f"Episode ids {ids[0]}..{ids[-1]} are outside [0, {total}) of {spec.label}.")
    builder = open_builder(spec)
    step_features = builder.info.features["steps"].feature
    action_dim = composed_action_dim(spec, step_features)
    if spec.action_dims is not None and any(not 0 <= d < action_dim for d in spec.action_dims):
        raise ValueError(f"action_dims={spec.action_dims} out of range for {action_dim}-D actions of {spec.label}.")
    for what, key_path in [("obs_keys", k) for k in obs_keys.values()] + (
            [("language_key", spec.language_key)] if with_language else []):
        if key_path.startswith(_EPISODE_METADATA):
            _lookup(builder.info.features["episode_metadata"], key_path[len(_EPISODE_METADATA):], what, spec)
        else:
            _lookup(step_features, key_path, what, spec)

    lo, hi = int(ids[0]), int(ids[-1]) + 1
    keep = tf.constant(np.isin(np.arange(lo, hi), ids))  # (hi - lo,) bool
    episodes = builder.as_dataset(
        split=tfds.core.ReadInstruction(spec.source_split, from_=lo, to=hi, unit="abs"),
        shuffle_files=False,
        decoders=_skip_image_decoders(builder.info.features),
        read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False, skip_prefetch=True),
    )
    episodes = episodes.enumerate(start=lo).filter(lambda i, ep: keep[i - lo])
    episodes = episodes.filter(lambda i, ep: ep["steps"].cardinality() != 0)

    def to_trajectory(episode_id, episode):
        steps = episode["steps"].batch(_MAX_STEPS).get_single_element()  # every field: (T, ...)
        num_steps = tf.shape(tf.nest.flatten(steps)[0])[0]

        def field(key_path):
            if key_path.startswith(_EPISODE_METADATA):
                value = _lookup(episode["episode_metadata"], key_path[len(_EPISODE_METADATA):], "key", spec)
                return tf.repeat(value[None], num_steps, axis=0)  # (T, ...)
            return _lookup(steps, key_path, "key", spec)

        if spec.action_keys:  # (T, d_i) or (T,) fields -> (T, D_a)
            root = field(spec.action_key)
            parts = [tf.cast(_lookup(root, k, "action_keys", spec), tf.float32) for k in spec.action_keys]
            widths = [int(np.prod(x.shape[1:])) for x in parts]  # static: 0-d fields are one dimension
            actions = tf.concat([tf.reshape(x, [num_steps, w]) for x, w in zip(parts, widths)], axis=-1)
        else:
            actions = tf.cast(field(spec.action_key), tf.float32)  # (T, D_a)
        if spec.action_dims is not None:
            actions = tf.gather(actions, list(spec.action_dims), axis=-1)  # (T, len(action_dims))
        traj = {"episode_id": episode_id, "actions": actions}
        if obs_keys:
            traj["observation"] = {name: field(path) for name, path in obs_keys.items()}
        if with_language:
            traj["language"] = field(spec.language_key)  # (T,) string
        return traj

    return episodes.map(to_trajectory, num_parallel_calls=num_parallel_calls, deterministic=True)
