"""Self-describing tokenizer directories: Orbax params + `config.json` + `normalizer.json`.

Layout of a tokenizer directory:
    <dir>/config.json       OATConfig.to_dict()
    <dir>/normalizer.json   ActionNormalizer.to_dict()
    <dir>/params/           Orbax StandardCheckpointer checkpoint of the float32 param tree
    <dir>/dataset_normalizers.json  (tokenizers trained on a mixture) {"datasets": {label: ActionNormalizer.to_dict()}},
                            one normalizer per mixture member in mixture order; normalizer.json is the first one's
A training workdir holding such a directory as `<workdir>/tokenizer/` is accepted by `load` too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from oat_jax import integrity
from oat_jax.atomic_dir import atomic_directory, recover
from oat_jax.config import OATConfig
from oat_jax.model import abstract_params, check_params
from oat_jax.normalizer import ActionNormalizer

CONFIG_FILE = "config.json"
NORMALIZER_FILE = "normalizer.json"
DATASET_NORMALIZERS_FILE = "dataset_normalizers.json"
PARAMS_DIR = "params"
WORKDIR_SUBDIR = "tokenizer"


def is_tokenizer_dir(path: str) -> bool:
    """True if `path` holds the three parts of a saved tokenizer."""
    return all(os.path.exists(os.path.join(path, name)) for name in (CONFIG_FILE, NORMALIZER_FILE, PARAMS_DIR))


def resolve_tokenizer_dir(path: str) -> str:
    """Absolute tokenizer directory for `path` (a tokenizer directory or a workdir with `tokenizer/`).

    Raises:
      FileNotFoundError: `path` does not exist, or holds no saved tokenizer.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        recover(path, is_tokenizer_dir)  # a save killed mid-swap (non-Linux fallback) left its copy beside path
    if not os.path.exists(path):
        raise FileNotFoundError(f"No tokenizer at {path!r}: the path does not exist.")
    for candidate in (path, os.path.join(path, WORKDIR_SUBDIR)):
        if is_tokenizer_dir(candidate):
            return candidate
    raise FileNotFoundError(
        f"{path!r} holds no saved tokenizer: expected {CONFIG_FILE}, {NORMALIZER_FILE} and {PARAMS_DIR}/ there or "
        f"in its {WORKDIR_SUBDIR}/ subdirectory (write one with OATTokenizer.save).")


def save_params(directory: str, params) -> None:
    """Writes a param tree (any arrays) as an Orbax StandardCheckpointer checkpoint at `directory`."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, jax.device_get(params))


def restore_params(directory: str, abstract):
    """Reads a checkpoint written by `save_params` onto the default device.

    Args:
      abstract: tree of jax.ShapeDtypeStruct giving the expected structure, shapes and dtypes.
    Returns:
      the param tree as jax arrays on jax.devices()[0].
    """
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, target)


def dataset_normalizers_to_dict(normalizers: Mapping[str, ActionNormalizer]) -> dict[str, Any]:
    """JSON content of `dataset_normalizers.json`: {"datasets": {label: ActionNormalizer.to_dict()}} in order."""
    return {"datasets": {label: n.to_dict() for label, n in normalizers.items()}}


def dataset_normalizers_from_dict(d: Mapping[str, Any]) -> dict[str, ActionNormalizer]:
    """Inverse of `dataset_normalizers_to_dict` (order kept)."""
    if not isinstance(d.get("datasets"), Mapping) or not d["datasets"]:
        raise ValueError("expected {'datasets': {label: normalizer dict, ...}} with at least one dataset")
    return {str(label): ActionNormalizer.from_dict(n) for label, n in d["datasets"].items()}


def save(path: str, config: OATConfig, params, normalizer: ActionNormalizer, overwrite: bool = False,
         dataset_normalizers: Mapping[str, ActionNormalizer] | None = None) -> str:
    """Writes a tokenizer directory; returns its absolute path.

    Args:
      path: directory to create (must not exist unless `overwrite`; an empty directory is fine).
      config / params / normalizer: the tokenizer's parts; params must match config.
      dataset_normalizers: {dataset label: normalizer} of a tokenizer trained on a mixture (written to
        dataset_normalizers.json); None writes no such file.
      overwrite: replace an existing saved tokenizer (any other non-empty directory is refused, never deleted).
    The directory is written beside `path` and swapped in at the end (`oat_jax.atomic_dir`): a crash at any point
    leaves the old tokenizer or the new one, never a partial directory.
    """
    check_params(config, params)
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    with atomic_directory(path, overwrite, recognise=is_tokenizer_dir, what="tokenizer") as tmp:
        save_params(os.path.join(tmp, PARAMS_DIR), params)
        files = [(CONFIG_FILE, config.to_dict()), (NORMALIZER_FILE, normalizer.to_dict())]
        if dataset_normalizers:
            files.append((DATASET_NORMALIZERS_FILE, dataset_normalizers_to_dict(dataset_normalizers)))
        for name, content in files:
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=1)
        integrity.write_manifest(tmp)
    return path


def _read_json(file: str, build):
    """build(json content of `file`); ValueError naming the file when it is not valid JSON or not valid content."""
    try:
        with open(file, encoding="utf-8") as f:
            return build(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{file} is damaged or not a tokenizer file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); save the tokenizer again or restore the file "
                         f"from a copy.") from e


def load_dataset_normalizers(path: str) -> dict[str, ActionNormalizer] | None:
    """The per-dataset normalizers of tokenizer directory `path` (resolved as in `load`), or None when it was not
    trained on a mixture (no dataset_normalizers.json)."""
    file = os.path.join(resolve_tokenizer_dir(path), DATASET_NORMALIZERS_FILE)
    return _read_json(file, dataset_normalizers_from_dict) if os.path.exists(file) else None


def load(path: str, verify: bool = True) -> tuple[OATConfig, dict, ActionNormalizer]:
    """Reads a tokenizer directory (or a workdir holding `tokenizer/`).

    Args:
      verify: check every file against the SHA-256 recorded at save time (`integrity.json`; directories saved
        before it existed load unverified). False skips the hashing (very large artifacts, trusted storage).
    Returns:
      (config, params as float32 jax arrays on the default device, normalizer).
    Raises:
      FileNotFoundError: missing path or no tokenizer there.
      integrity.IntegrityError (a ValueError): a file is missing, truncated, damaged or edited since the save.
      ValueError: the saved config does not match the saved params (tree or shapes).
    """
    path = resolve_tokenizer_dir(path)
    if verify:
        integrity.verify(path, "tokenizer")
    config = _read_json(os.path.join(path, CONFIG_FILE), OATConfig.from_dict)
    normalizer = _read_json(os.path.join(path, NORMALIZER_FILE), ActionNormalizer.from_dict)
    params_dir = os.path.join(path, PARAMS_DIR)
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata(params_dir).item_metadata
    check_params(config, getattr(saved, "tree", saved), source=f"the params saved in {params_dir!r}")
    return config, restore_params(params_dir, abstract_params(config)), normalizer
