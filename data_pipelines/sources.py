"""Source readers of the file formats `data_pipelines.convert` and `data_pipelines.beam_convert` turn into RLDS:
each yields `rlds_writer.Episode`s from one input (see convert.py for the layouts), plus the helpers that expand
--input into inputs and list robomimic's split masks.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from data_pipelines import lerobot
from data_pipelines.rlds_writer import Episode, EpisodeError
from data_pipelines.rlds_writer import reading as _reading

ACTION_KEYS = ("action", "actions")
REWARD_KEYS = ("reward", "rewards")
LANGUAGE_KEYS = ("language_instruction", "language", "lang")
EPISODE_ENDS_KEY = "episode_ends"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _pick_action_key(keys: Sequence[str], action_key: Optional[str], where: str) -> str:
    candidates = [action_key] if action_key else list(ACTION_KEYS)
    for key in candidates:
        if key in keys:
            return key
    raise EpisodeError(f"{where}: missing action key {' or '.join(map(repr, candidates))} (has: {sorted(keys)}); "
                       "pass --action_key=<name of the action array>.")


def _as_text(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _episode_from_arrays(arrays: Mapping[str, np.ndarray], source: str, action_key: Optional[str],
                         language: str) -> Episode:
    """Split a dict of per-step arrays into action / reward / observations."""
    key = _pick_action_key(list(arrays), action_key, source)
    observation, extras = {}, {}
    for name, value in arrays.items():
        if name == key or name == EPISODE_ENDS_KEY:
            continue
        if name in LANGUAGE_KEYS and np.asarray(value).ndim == 0:
            language = _as_text(value)
        elif name in REWARD_KEYS:
            extras["reward"] = np.asarray(value, dtype=np.float32).reshape(-1)  # (T,)
        else:
            observation[name] = np.asarray(value)
    return Episode(source=source, action=np.asarray(arrays[key]), observation=observation, language=language,
                   extras=extras)


def hdf5_masks(path: str) -> dict[str, list[str]]:
    """robomimic's filter keys of an HDF5 file: {mask name: demo names}, from its mask/<name> lists of demo names
    (e.g. mask/train, mask/valid, mask/20_percent); {} when the file has none."""
    import h5py  # optional dependency: pip install -e .[convert]

    with _reading(path, "an HDF5 file"):
        f = h5py.File(path, "r")
    with f, _reading(path, "a robomimic/LIBERO HDF5 file"):
        if "mask" not in f:
            return {}
        return {name: [_as_text(d) for d in f["mask"][name][()]] for name in sorted(f["mask"].keys())
                if isinstance(f["mask"][name], h5py.Dataset)}


def read_hdf5(path: str, action_key: Optional[str] = None, language: str = "",
              mask: Optional[str] = None, demos: Optional[Sequence[str]] = None) -> Iterator[Episode]:
    """Episodes of a robomimic/LIBERO HDF5 file, in demo-number order; with `mask`, only the demos listed in the
    file's mask/<mask> (none when the file has no such list); with `demos`, only those demo names."""
    import h5py  # optional dependency: pip install -e .[convert]

    chosen = None
    if mask is not None:
        chosen = set(hdf5_masks(path).get(mask, []))
    if demos is not None:
        chosen = set(demos) if chosen is None else chosen & set(demos)

    with _reading(path, "an HDF5 file"):
        f = h5py.File(path, "r")
    with f, _reading(path, "a robomimic/LIBERO HDF5 file"):
        if "data" not in f:
            raise EpisodeError(f"{path}: no 'data' group; expected the robomimic/LIBERO layout data/demo_*/actions.")
        data = f["data"]
        file_language = _as_text(data.attrs.get("language_instruction", language))
        if "problem_info" in data.attrs:  # LIBERO
            try:
                info = json.loads(_as_text(data.attrs["problem_info"]))
            except ValueError as e:
                raise EpisodeError(f"{path}: data.attrs['problem_info'] is not valid JSON ({e}); fix or remove the "
                                   f"attribute, or pass --language.") from e
            if not isinstance(info, dict):
                raise EpisodeError(f"{path}: data.attrs['problem_info'] is not a JSON object.")
            file_language = info.get("language_instruction", file_language)
        if chosen is not None and not chosen <= set(data.keys()):
            raise EpisodeError(f"{path}: mask/{mask} lists demos that data/ does not hold "
                               f"({sorted(chosen - set(data.keys()))[:5]}); fix the mask or drop it.")
        for demo in sorted(data.keys(), key=_natural_key):
            if chosen is not None and demo not in chosen:
                continue
            group = data[demo]
            arrays = {k: group[k][()] for k in group.keys() if isinstance(group[k], h5py.Dataset)}
            if "obs" in group:
                arrays.update({k: v[()] for k, v in group["obs"].items() if isinstance(v, h5py.Dataset)})
            text = _as_text(group.attrs.get("language_instruction", file_language))
            arrays = {k: v for k, v in arrays.items() if k not in ("states", "dones")}  # simulator state, flags
            yield _episode_from_arrays(arrays, f"{path} episode data/{demo}", action_key, text)


def _split_by_ends(arrays: Mapping[str, np.ndarray], ends: np.ndarray, source: str) -> Iterator[tuple[int, dict]]:
    """Per-episode slices of concatenated arrays (N, ...) given exclusive episode ends (E,)."""
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    total = int(ends[-1]) if ends.size else 0
    for name, value in arrays.items():
        if value.shape[0] != total:
            raise EpisodeError(f"{source}: {name} has {value.shape[0]} rows but episode_ends ends at {total}; "
                               "all concatenated arrays must cover every episode.")
    start = 0
    for index, end in enumerate(ends):
        if end < start:
            raise EpisodeError(f"{source} episode {index}: episode_ends is not increasing ({start} -> {end}).")
        yield index, {name: value[start:end] for name, value in arrays.items()}  # each (T_i, ...)
        start = int(end)


def hdf5_demo_names(path: str, mask: Optional[str] = None) -> list[str]:
    """Demo names of an HDF5 file in the order `read_hdf5` reads them (only mask/<mask>'s with `mask`)."""
    import h5py  # optional dependency: pip install -e .[convert]

    with _reading(path, "an HDF5 file"):
        f = h5py.File(path, "r")
    with f, _reading(path, "a robomimic/LIBERO HDF5 file"):
        if "data" not in f:
            raise EpisodeError(f"{path}: no 'data' group; expected the robomimic/LIBERO layout data/demo_*/actions.")
        names = sorted(f["data"].keys(), key=_natural_key)
    if mask is not None:
        listed = set(hdf5_masks(path).get(mask, []))
        names = [n for n in names if n in listed]
    return names


def _check_numeric(dtype, where: str) -> None:
    """EpisodeError unless `dtype` is a number or bool array's: object arrays are refused before they are read
    (their chunks would be unpickled, which can run code)."""
    if np.dtype(dtype).kind not in "biuf":
        raise EpisodeError(f"{where} has dtype {np.dtype(dtype)}; the converter reads numeric arrays only (object "
                           f"arrays are never decoded: unpickling a file can run code).")


def read_zarr(path: str, action_key: Optional[str] = None, language: str = "") -> Iterator[Episode]:
    """Episodes of a diffusion-policy replay-buffer zarr store (data/<key>, meta/episode_ends)."""
    import zarr  # optional dependency: pip install -e .[convert]

    with _reading(path, "a zarr replay buffer"):
        root = zarr.open_group(path, mode="r")
    try:  # zarr reads the arrays' metadata here, never a chunk
        if "data" not in root or "meta" not in root or EPISODE_ENDS_KEY not in root["meta"]:
            raise EpisodeError(f"{path}: expected a replay buffer with data/<key> arrays and meta/episode_ends.")
        keys = sorted(root["data"].array_keys())
        arrays = {name: root[name] for name in [f"data/{k}" for k in keys] + [f"meta/{EPISODE_ENDS_KEY}"]}
    except EpisodeError:
        raise
    except Exception as e:  # noqa: BLE001  (zarr's errors for dtypes it cannot map, e.g. pickled objects)
        raise EpisodeError(f"{path}: an array's metadata does not describe a numeric array ({e}); the converter "
                           f"reads numeric arrays only.") from e
    _pick_action_key(keys, action_key, f"{path} (every episode)")
    for name, array in arrays.items():  # object arrays are refused before any chunk is decoded
        _check_numeric(array.dtype, f"{path}: {name}")
    ends = arrays[f"meta/{EPISODE_ENDS_KEY}"][:]
    for index, episode in _split_by_ends({k: arrays[f"data/{k}"] for k in keys}, ends, path):
        episode = {k: np.asarray(v) for k, v in episode.items()}
        yield _episode_from_arrays(episode, f"{path} episode {index}", action_key, language)


def read_npz(path: str, action_key: Optional[str] = None, language: str = "") -> Iterator[Episode]:
    """Episodes of a directory of per-episode .npz files, or of one .npz with an episode_ends array."""
    if os.path.isdir(path):
        files = sorted((f for f in os.listdir(path) if f.endswith(".npz")), key=_natural_key)
        if not files:
            raise EpisodeError(f"{path}: no .npz files; expected one .npz file per episode.")
        for name in files:
            file = os.path.join(path, name)
            with _reading(file, "an .npz archive"), np.load(file, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            yield _episode_from_arrays(arrays, f"{file} episode {os.path.splitext(name)[0]}", action_key, language)
        return
    with _reading(path, "an .npz archive"), np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if EPISODE_ENDS_KEY not in arrays:
        raise EpisodeError(f"{path}: a single .npz file needs an '{EPISODE_ENDS_KEY}' array (exclusive end of each "
                           "episode); or pass a directory with one .npz per episode.")
    ends = arrays.pop(EPISODE_ENDS_KEY)
    scalars = {k: v for k, v in arrays.items() if v.ndim == 0}
    per_step = {k: v for k, v in arrays.items() if v.ndim > 0}
    _pick_action_key(list(per_step), action_key, f"{path} (every episode)")
    for index, episode_arrays in _split_by_ends(per_step, ends, path):
        yield _episode_from_arrays({**episode_arrays, **scalars}, f"{path} episode {index}", action_key, language)


READERS = {"hdf5": read_hdf5, "zarr": read_zarr, "npz": read_npz, "lerobot": lerobot.read_lerobot}


_HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")


def expand_inputs(fmt: str, input_path: str) -> list[str]:
    """The input files / stores of `--input`: a glob pattern (sorted matches), a folder of HDF5 files (e.g. a LIBERO
    suite: one file per task) or a single file / store / npz folder. FileNotFoundError names what was looked for."""
    if glob.has_magic(input_path):
        matches = sorted(glob.glob(input_path))
        if not matches:
            raise FileNotFoundError(f"--input={input_path} matches no file.")
        return matches
    if not os.path.exists(input_path):
        raise FileNotFoundError(f"--input={input_path} does not exist.")
    if fmt == "hdf5" and os.path.isdir(input_path):
        files = sorted((os.path.join(input_path, f) for f in os.listdir(input_path)
                        if f.lower().endswith(_HDF5_SUFFIXES)), key=_natural_key)
        if not files:
            raise FileNotFoundError(f"--input={input_path} is a folder without HDF5 files "
                                    f"({', '.join(_HDF5_SUFFIXES)}).")
        return files
    return [input_path]


def split_masks(fmt: str, inputs: Sequence[str], input_path: str) -> list[str]:
    """Sorted names of the robomimic masks (mask/<name>) in any HDF5 input: each becomes a TFDS split. Raises
    EpisodeError for a name that cannot name a split."""
    masks = sorted({m for item in inputs for m in hdf5_masks(item)}) if fmt == "hdf5" else []
    for m in masks:
        if not re.fullmatch(r"\w+", m):
            raise EpisodeError(f"{input_path}: mask/{m} cannot name a TFDS split (letters, digits and _ only).")
    return masks
