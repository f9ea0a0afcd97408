"""Write episodes as an RLDS dataset (TFDS builder directory), validated and atomically.

Layout of every written episode (RLDS):
  steps: {"action": (D_a,) float32, "observation": {name: ...}, <extras: reward, success, ...>,
          "is_first", "is_last", "is_terminal": bool, "language_instruction": string}
  episode_metadata: {"file_path": string, "episode_name": string, <extra metadata>}
The result loads with plain `tfds.builder_from_directory(output)`. The action statistics of the train split
(`TRAIN_STATISTICS_SPLIT`, the training configs' default episode split) are computed while writing and stored
beside the episodes, where `data_pipelines.statistics.get_dataset_statistics` finds them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import itertools
import os
import re
import shutil
import tempfile
import zipfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

VERSION = "1.0.0"
# (val_fraction, split_seed) of the episode split whose train statistics a conversion stores with the dataset.
TRAIN_STATISTICS_SPLIT = (0.1, 0)


class EpisodeError(ValueError):
    """An input episode is malformed; the message names the file and the episode."""


@dataclasses.dataclass
class Episode:
    """One demonstration in memory, before it is written.

    Attributes:
      source: where it came from, used in errors and stored as metadata, e.g. "demos.hdf5 episode data/demo_3".
      action: (T, D_a) float actions.
      observation: name -> (T, ...) per-step observations (uint8 (T, H, W, C) with C in 1/3/4 become images).
      language: instruction for every step ("" when unknown), or one instruction per step (a (T,) sequence of str).
      extras: name -> (T,) or (T, ...) other per-step fields (reward, success, ...), stored at step level.
      metadata: name -> str / bool / int / float per-episode fields.
    """

    source: str
    action: np.ndarray
    observation: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    language: str | Sequence[str] = ""
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def reading(file: str, what: str) -> Iterator[None]:
    """Turns a library error while reading `file` (truncated, corrupt or of another format) into an EpisodeError
    that names the file."""
    try:
        yield
    except EpisodeError:
        raise
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "allow_pickle" in detail:
            detail = "it holds pickled objects, which are never loaded"
        raise EpisodeError(f"{file}: cannot read it as {what} ({detail}); check that the file is complete and has "
                           f"this format (--format).") from e


def _is_image(x: np.ndarray) -> bool:
    return x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] in (1, 3, 4)


def _storage_dtype(x: np.ndarray) -> np.dtype:
    if np.issubdtype(x.dtype, np.floating):
        return np.dtype(np.float32)
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer):
        return x.dtype
    raise EpisodeError(f"dtype {x.dtype} cannot be stored; convert it to a float, int or bool array.")


IMAGE_ENCODINGS = ("jpeg", "png")


def _step_feature(x: np.ndarray, image_encoding: str = "png") -> tfds.features.FeatureConnector:
    """Feature of one step of x (T, ...); images as `image_encoding` (JPEG only holds 1 or 3 channels: RGBA and
    two-channel images stay PNG)."""
    if _is_image(x):
        encoding = image_encoding if x.shape[-1] in (1, 3) else "png"
        return tfds.features.Image(shape=x.shape[1:], encoding_format=encoding)
    return tfds.features.Tensor(shape=x.shape[1:], dtype=_storage_dtype(x))


def _metadata_feature(value: Any) -> tfds.features.FeatureConnector:
    if isinstance(value, str):
        return tfds.features.Text()
    if isinstance(value, (bool, np.bool_)):
        return tfds.features.Scalar(dtype=np.bool_)
    if isinstance(value, (int, np.integer)):
        return tfds.features.Scalar(dtype=np.int64)
    if isinstance(value, (float, np.floating)):
        return tfds.features.Scalar(dtype=np.float32)
    raise EpisodeError(f"metadata value {value!r} must be a str, bool, int or float.")


def _signature(episode: Episode) -> dict:
    """Per-step shapes and dtypes of every field, for the consistency check across episodes."""
    sig = {"action": (episode.action.shape[1:], str(_storage_dtype(episode.action)))}
    for group, fields in (("observation", episode.observation), ("extras", episode.extras)):
        for name, x in fields.items():
            sig[f"{group}/{name}"] = (x.shape[1:], "image" if _is_image(x) else str(_storage_dtype(x)))
    for name, value in episode.metadata.items():
        sig[f"metadata/{name}"] = type(_metadata_feature(value)).__name__
    return sig


def validate_episode(episode: Episode, reference: dict | None = None) -> dict:
    """Check one episode; raise EpisodeError naming `episode.source` if it is malformed.

    Checks: at least one step; action (T, D_a) with D_a >= 1; every per-step field has the same T; actions and
    float fields are finite; field names, per-step shapes and dtypes equal `reference` (another episode's).
    Returns this episode's signature (use it as `reference` for the next episodes).
    """
    where = episode.source
    try:
        action = np.asarray(episode.action)
        if action.ndim != 2 or action.shape[0] == 0 or action.shape[1] == 0:
            raise EpisodeError(f"action must have shape (T >= 1, D_a >= 1), got {action.shape}" +
                               (" (empty episode: drop it from the input)" if action.shape[:1] == (0,) else ""))
        num_steps = action.shape[0]
        fields = {"action": action, **{f"observation/{k}": np.asarray(v) for k, v in episode.observation.items()},
                  **{f"extras/{k}": np.asarray(v) for k, v in episode.extras.items()}}
        for name, x in fields.items():
            if x.ndim == 0 or x.shape[0] != num_steps:
                raise EpisodeError(f"{name} has {x.shape[0] if x.ndim else 'no'} steps but action has {num_steps}; "
                                   "every per-step field needs the same length")
            if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
                t, *_ = np.argwhere(~np.isfinite(x))[0]
                raise EpisodeError(f"{name} has NaN/Inf values (first at step {t}); clean or drop this episode")
        if not isinstance(episode.language, str) and len(episode.language) != num_steps:
            raise EpisodeError(f"language has {len(episode.language)} per-step instructions but action has "
                               f"{num_steps} steps")
        signature = _signature(episode)
    except EpisodeError as e:
        raise EpisodeError(f"{where}: {e}.") from None
    if reference is not None and signature != reference:
        diff = sorted(k for k in set(signature) | set(reference) if signature.get(k) != reference.get(k))
        details = "; ".join(f"{k}: {signature.get(k, 'missing')} here vs {reference.get(k, 'missing')} in the "
                            f"first episode" for k in diff)
        raise EpisodeError(f"{where}: fields differ from the first episode ({details}). All episodes need the same "
                           "keys, per-step shapes (e.g. action dims) and dtypes; fix or drop this episode.")
    return signature


def episode_features(episode: Episode, image_encoding: str = "png") -> tfds.features.FeaturesDict:
    """RLDS features of a dataset whose episodes look like `episode` (images stored as `image_encoding`)."""
    # An empty `observation` FeaturesDict cannot be decoded by TFDS: action-only sources have no such feature.
    observation = ({"observation": tfds.features.FeaturesDict(
        {k: _step_feature(np.asarray(v), image_encoding) for k, v in episode.observation.items()})}
        if episode.observation else {})
    steps = {
        "action": tfds.features.Tensor(shape=episode.action.shape[1:], dtype=np.float32),
        **observation,
        "is_first": tfds.features.Scalar(dtype=np.bool_),
        "is_last": tfds.features.Scalar(dtype=np.bool_),
        "is_terminal": tfds.features.Scalar(dtype=np.bool_),
        "language_instruction": tfds.features.Text(),
        **{k: _step_feature(np.asarray(v), image_encoding) for k, v in episode.extras.items()},
    }
    metadata = {"file_path": tfds.features.Text(), "episode_name": tfds.features.Text(),
                **{k: _metadata_feature(v) for k, v in episode.metadata.items()}}
    return tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps),
                                       "episode_metadata": tfds.features.FeaturesDict(metadata)})


def _example(episode: Episode) -> dict:
    num_steps = len(episode.action)
    cast = lambda x: np.asarray(x).astype(_storage_dtype(np.asarray(x)), copy=False)  # noqa: E731
    action = cast(episode.action)
    observation = {k: np.asarray(v) if _is_image(np.asarray(v)) else cast(v) for k, v in episode.observation.items()}
    extras = {k: np.asarray(v) if _is_image(np.asarray(v)) else cast(v) for k, v in episode.extras.items()}
    obs_steps = [{"observation": {k: v[t] for k, v in observation.items()}} if observation else {}
                 for t in range(num_steps)]
    steps = [{"action": action[t], **obs_steps[t],
              "is_first": t == 0, "is_last": t == num_steps - 1, "is_terminal": t == num_steps - 1,
              "language_instruction": episode.language if isinstance(episode.language, str) else episode.language[t],
              **{k: v[t] for k, v in extras.items()}}
             for t in range(num_steps)]
    file_path, _, name = episode.source.partition(" episode ")
    return {"steps": steps, "episode_metadata": {"file_path": file_path, "episode_name": name or file_path,
                                                 **dict(episode.metadata)}}


def dataset_name(output: str) -> str:
    """A valid TFDS dataset name (snake_case) derived from the output directory name."""
    base = os.path.basename(os.path.normpath(output))
    if re.fullmatch(r"\d+\.\d+\.\d+", base):  # .../my_dataset/1.0.0 -> my_dataset
        base = os.path.basename(os.path.dirname(os.path.normpath(output)))
    name = re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_")
    return name if name and name[0].isalpha() else f"dataset_{name}"


def check_dataset_name(name: str) -> str:
    """`name` if it is a TFDS dataset name (lowercase letters, digits and underscores, starting with a letter); else
    ValueError: the name labels the records inside the output directory and must never act as a path."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise ValueError(f"--name={name!r} is not a dataset name: use lowercase letters, digits and underscores, "
                         f"starting with a letter (it names the records inside --output; it is not a path).")
    return name


def is_builder_dir(path: str) -> bool:
    """True if `path` is an RLDS/TFDS builder directory (what `write_rlds` writes): dataset_info.json and
    features.json directly inside."""
    return all(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "features.json"))


def check_output_apart(output: str, inputs: Sequence[str], flag: str = "--input") -> None:
    """Raises ValueError when `output` is, contains, or lies inside one of `inputs` (symlinks resolved): writing
    there could replace or delete the data being converted."""
    out = os.path.realpath(output)
    for item in inputs:
        src = os.path.realpath(item)
        if out == src or out.startswith(src.rstrip(os.sep) + os.sep) or src.startswith(out.rstrip(os.sep) + os.sep):
            relation = "is" if out == src else ("lies inside" if len(out) > len(src) else "contains")
            raise ValueError(f"--output={output} {relation} {flag}={item}: converting would overwrite or delete the "
                             f"input. Choose an --output outside the input.")


def _remove_stale_tmp(output: str) -> None:
    """Deletes `.NAME.tmp-<pid>-*` directories beside `output` whose writer process is gone (killed conversions)."""
    parent, base = os.path.split(output)
    prefix = f".{base}.tmp-"
    for entry in os.listdir(parent) if os.path.isdir(parent) else ():
        pid = entry[len(prefix):].split("-", 1)[0] if entry.startswith(prefix) else ""
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            previous = os.path.join(parent, entry, "previous")
            if not os.path.exists(output) and os.path.isdir(previous):  # killed between the two moves of `commit`
                os.replace(previous, output)
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except PermissionError:
            continue


def write_rlds(episodes: Iterable[Episode], output: str, *, name: str | None = None, overwrite: bool = False,
               description: str = "Converted by data_pipelines.", inputs: Sequence[str] = (),
               image_encoding: str = "png",
               splits: Mapping[str, Callable[[], Iterable[Episode]]] | None = None,
               statistics_split: tuple[float, int] | None = TRAIN_STATISTICS_SPLIT) -> str:
    """Validate `episodes` and write them, in order, as an RLDS builder directory at `output`.

    `episodes` is the 'train' split; `splits` maps more split names to functions returning their episodes (each
    validated against the first train episode).

    Everything is written to a temporary sibling directory and moved to `output` only when all episodes were
    written; on any error nothing is left behind (temporary directories of killed runs are removed by the next
    write to the same output). `overwrite` replaces only a previous dataset (`is_builder_dir`) or an empty
    directory; `output` may not be, contain or lie inside any of `inputs`. Images are stored as `image_encoding`
    ('jpeg' as published Open X-Embodiment datasets, or lossless 'png'). The train statistics of the
    `statistics_split` (val_fraction, split_seed) episode split are written with the dataset (None: not).
    Returns `output`.
    """
    if image_encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"image_encoding={image_encoding!r} is not one of {IMAGE_ENCODINGS}.")
    output = prepare_output(output, overwrite, inputs)
    name = check_dataset_name(name or dataset_name(output))
    iterator: Iterator[Episode] = iter(episodes)
    first = next(iterator, None)
    if first is None:
        raise EpisodeError("The input has no episodes; nothing to convert.")
    reference = validate_episode(first)
    features = episode_features(first, image_encoding)

    actions = []  # (T_i, D_a) float32 per train episode, as stored: the statistics pass

    def examples():
        for index, episode in enumerate(itertools.chain([first], iterator)):
            if index:
                validate_episode(episode, reference)
            if statistics_split is not None:
                actions.append(np.asarray(episode.action, np.float32))
            yield str(index), _example(episode)

    def split_examples(make: Callable[[], Iterable[Episode]]):
        for index, episode in enumerate(make()):
            validate_episode(episode, reference)
            yield str(index), _example(episode)

    with staging_dir(output) as tmp:
        builder = tfds.dataset_builders.store_as_tfds_dataset(
            name=name, version=VERSION, features=features, data_dir=tmp,
            split_datasets={"train": examples(), **{k: split_examples(v) for k, v in (splits or {}).items()}},
            description=description, disable_shuffling=True)
        if statistics_split is not None:
            write_train_statistics(str(builder.data_dir), actions, *statistics_split)
        commit(str(builder.data_dir), output, tmp)
    return output


def write_train_statistics(builder_directory: str, actions: Sequence[np.ndarray], val_fraction: float,
                           split_seed: int) -> str | None:
    """Stores the statistics of the train episodes (split `val_fraction`, `split_seed`) of the dataset written at
    `builder_directory`, given every episode's (T_i, D_a) float32 actions in dataset order; returns the path."""
    from data_pipelines import splits, statistics

    ids = splits.split_episode_ids(len(actions), "train", val_fraction, split_seed)
    stats = statistics.summarize_episodes([actions[i] for i in ids], "train", val_fraction, split_seed)
    return statistics.store_train_statistics(builder_directory, stats)


def prepare_output(output: str, overwrite: bool, inputs: Sequence[str] = ()) -> str:
    """Checks that `output` may be written (local, apart from `inputs`, absent / empty / a previous dataset with
    `overwrite`); returns its absolute path. Raises ValueError or FileExistsError naming the flag."""
    if "://" in output:
        raise ValueError(f"output={output!r}: write to a local directory, then copy it (e.g. gsutil -m cp -r).")
    output = os.path.abspath(output)
    check_output_apart(output, inputs)
    _remove_stale_tmp(output)  # a conversion killed mid-commit: its previous dataset is put back first
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        if not overwrite:
            raise FileExistsError(f"{output} already exists; choose another --output or pass --overwrite.")
        if not is_builder_dir(output):
            raise FileExistsError(f"--output={output} exists and is not a dataset written by data_pipelines (no "
                                  f"dataset_info.json + features.json), so --overwrite will not delete it; choose "
                                  f"another --output.")
    return output


@contextlib.contextmanager
def staging_dir(output: str) -> Iterator[str]:
    """A temporary directory beside `output` (stale ones of killed runs removed first), deleted on exit whatever
    happens: write the dataset there, then `commit` it."""
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_tmp(output)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-{os.getpid()}-", dir=parent)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two existing paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported. (The same
    swap as oat_jax/atomic_dir.py, which data_pipelines does not import.)"""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def commit(builder_dir: str, output: str, tmp: str) -> None:
    """Moves a complete builder directory written inside staging directory `tmp` to `output`. An existing `output`
    (an empty directory or the previous dataset) is swapped out atomically where the filesystem can (it ends in
    `tmp`, deleted with it); elsewhere it is moved to `tmp/previous` first, put back if the second move fails, and
    restored by the next conversion into `output` if the process dies in between (`_remove_stale_tmp`)."""
    if os.path.exists(output):
        if _exchange(builder_dir, output):
            return
        previous = os.path.join(tmp, "previous")
        os.replace(output, previous)
        try:
            os.replace(builder_dir, output)
        except BaseException:
            os.replace(previous, output)
            raise
        return
    os.replace(builder_dir, output)
