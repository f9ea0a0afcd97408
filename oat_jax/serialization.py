"""Exported tokenize/detokenize artifacts (`jax.export`, StableHLO) for serving stacks without the model code.

`export_tokenizer(tokenizer, directory, batch_sizes)` writes
    <directory>/manifest.json                    sizes, dtypes, batch sizes, platforms, file names
    <directory>/params.npz                       float32 params, keys "encoder/block_0/attn/query/kernel", ...
    <directory>/{tokenize,detokenize}_b<B>.jaxexport   serialized `jax.export.Exported`, one per batch size
The exported functions take the params as their first argument (stored once, shared by every batch size) and
include the normalizer, so they work in raw action units:
    tokenize(params, actions (B, H, D_a) float32) -> tokens (B, N) int32
    detokenize(params, tokens (B, N) int32, lengths (B,) int32 in 1..N) -> actions (B, H, D_a) float32

Artifacts written by jax >= 0.9.1 load with jax >= 0.8.2 (`manifest.json` records `min_jax_version`; an older jax
gets a RuntimeError saying so); `reexport(directory, new_directory)` writes them again with the running jax.

`ExportedTokenizer(directory)` loads them with jax and numpy alone: this module imports nothing else (not flax,
not the rest of oat_jax) but its siblings `input_checks.py` (numpy only; the same input validation as
`OATTokenizer`) and `integrity.py` (standard library; the export's file hashes), so a serving process can load
these three files on their own.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

if __package__:  # imported as oat_jax.serialization
    from oat_jax import input_checks, integrity
else:  # loaded as a standalone file (the jax + numpy runtime): its siblings, numpy / standard library only
    import importlib.util as _importlib_util

    def _sibling(name: str):
        spec = _importlib_util.spec_from_file_location(
            f"standalone_{name}", os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py"))
        module = _importlib_util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    input_checks, integrity = _sibling("input_checks"), _sibling("integrity")

# jax >= 0.9.1 serializes the device count only in the field that jax 0.8.2 introduced: an older jax reads 0
# devices there and refuses the call. (first exporting jax, oldest jax that loads its artifacts), newest first.
LOADER_REQUIREMENTS = (((0, 9, 1), (0, 8, 2)),)

MANIFEST_FILE = "manifest.json"
PARAMS_FILE = "params.npz"
FORMAT_VERSION = 1
FUNCTIONS = ("tokenize", "detokenize")


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.10.2' -> (0, 10, 2); a suffix such as '.dev20260101' or 'rc1' ends the number."""
    out = []
    for part in str(version).split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(out)


def required_jax(exporting_jax: str | None) -> str | None:
    """The oldest jax that loads artifacts written by jax `exporting_jax` ('0.10.2'), or None when any jax with
    `jax.export` does (or the exporting version is unknown)."""
    if not exporting_jax:
        return None
    written = version_tuple(exporting_jax)
    for first_writer, oldest_reader in LOADER_REQUIREMENTS:
        if written >= first_writer:
            return ".".join(map(str, oldest_reader))
    return None


def _artifact_name(function: str, batch_size: int) -> str:
    return f"{function}_b{batch_size}.jaxexport"


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def export_tokenizer(tokenizer, directory: str, batch_sizes: Sequence[int] = (1,),
                     platforms: Sequence[str] | None = None, overwrite: bool = False) -> str:
    """Serializes a tokenizer's tokenize and detokenize functions for fixed batch sizes.

    Args:
      tokenizer: an `oat_jax.OATTokenizer` (its config, params and pure `tokenize_fn` / `detokenize_fn`).
      directory: output directory (created; must be empty unless `overwrite`).
      batch_sizes: the batch sizes B to export (one pair of artifacts each).
      platforms: lowering platforms, e.g. ("cpu", "cuda") for one artifact that runs on both; None = the
        current default backend.
      overwrite: replace an existing export (any other non-empty directory is refused, never deleted).
    Returns:
      The directory's absolute path. The directory is written beside its target and swapped in when complete, with
      an integrity manifest (`integrity.json`) that `ExportedTokenizer` verifies.
    """
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes}.")
    platforms = tuple(platforms) if platforms else (jax.default_backend(),)
    directory = os.path.abspath(os.path.expanduser(directory))
    from oat_jax.atomic_dir import atomic_directory  # package-only (writing needs the library anyway)
    recognise = lambda d: os.path.isfile(os.path.join(d, MANIFEST_FILE))  # noqa: E731
    with atomic_directory(directory, overwrite, recognise=recognise, what="exported tokenizer") as tmp:
        _write_artifacts(tokenizer, tmp, batch_sizes, platforms)
        integrity.write_manifest(tmp)
    return directory


def reexport(source: str, directory: str, batch_sizes: Sequence[int] | None = None,
             platforms: Sequence[str] | None = None, overwrite: bool = False) -> str:
    """Exports again, with this process's jax, the tokenizer held by the export at `source` (its config,
    normalizer and params.npz), e.g. to run an export made by a newer jax under an older one.

    Args:
      source: an `export_tokenizer` directory (verified against its integrity manifest).
      directory: the new export's directory (as `export_tokenizer`).
      batch_sizes / platforms: None = those of `source`.
    Returns:
      The new directory's absolute path.
    """
    from oat_jax.config import OATConfig  # package-only: rebuilding needs the model code
    from oat_jax.normalizer import Normalizer
    from oat_jax.tokenizer import OATTokenizer

    source = os.path.abspath(os.path.expanduser(source))
    integrity.verify(source, "exported tokenizer")
    with open(os.path.join(source, MANIFEST_FILE), encoding="utf-8") as f:
        manifest = json.load(f)
    with np.load(os.path.join(source, PARAMS_FILE)) as data:
        params = _unflatten({k: data[k] for k in data.files})
    tokenizer = OATTokenizer(OATConfig.from_dict(manifest["config"]), params,
                             Normalizer.from_dict(manifest["normalizer"]))
    return export_tokenizer(tokenizer, directory, batch_sizes or manifest["batch_sizes"],
                            platforms or manifest["platforms"], overwrite=overwrite)


def _write_artifacts(tokenizer, directory: str, batch_sizes: list[int], platforms: tuple[str, ...]) -> None:
    """Writes the artifacts, params and manifest of `export_tokenizer` into the (empty) `directory`."""
    c = tokenizer.config
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), tokenizer.params)
    params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    files = {}
    for b in batch_sizes:
        specs = {
            "tokenize": (tokenizer.tokenize_fn,
                         (jax.ShapeDtypeStruct((b, c.horizon, c.action_dim), jnp.float32),)),
            "detokenize": (tokenizer.detokenize_fn, (jax.ShapeDtypeStruct((b, c.num_tokens), jnp.int32),
                                                     jax.ShapeDtypeStruct((b,), jnp.int32))),
        }
        for name, (fn, args) in specs.items():
            exported = jax_export.export(jax.jit(fn), platforms=platforms)(params_spec, *args)
            files[f"{name}_b{b}"] = _artifact_name(name, b)
            with open(os.path.join(directory, _artifact_name(name, b)), "wb") as f:
                f.write(exported.serialize())
    np.savez(os.path.join(directory, PARAMS_FILE), **_flatten(params))
    manifest = {"format_version": FORMAT_VERSION, "horizon": c.horizon, "action_dim": c.action_dim,
                "num_tokens": c.num_tokens, "vocab_size": c.vocab_size, "batch_sizes": batch_sizes,
                "platforms": list(platforms), "jax_version": jax.__version__,
                "min_jax_version": required_jax(jax.__version__), "files": files,
                "config": c.to_dict(), "normalizer": tokenizer.normalizer.to_dict()}
    with open(os.path.join(directory, MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)


class ExportedTokenizer:
    """Loads the artifacts written by `export_tokenizer` and calls them (jax + numpy only).

    Args:
      directory: the export directory.
      device: where the params are placed (None = the default device).

    Attributes:
      horizon / action_dim / num_tokens / vocab_size: the tokenizer's sizes.
      batch_sizes: the exported batch sizes; calls with another batch size raise ValueError.
      manifest: the parsed manifest.json.
    """

    def __init__(self, directory: str, device: Any = None, verify: bool = True):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        path = os.path.join(self.directory, MANIFEST_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No {MANIFEST_FILE} in {self.directory!r}; write artifacts with "
                                    f"oat_jax.serialization.export_tokenizer.")
        if verify:  # every file against the hashes recorded at export (exports made before them: unverified)
            integrity.verify(self.directory, "exported tokenizer")
        with open(path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {self.manifest.get('format_version')}; this loader reads "
                             f"version {FORMAT_VERSION}. Re-export with this version of oat_jax.")
        needed = self.manifest.get("min_jax_version") or required_jax(self.manifest.get("jax_version"))
        if needed and version_tuple(jax.__version__) < version_tuple(needed):
            raise RuntimeError(
                f"{self.directory} was exported with jax {self.manifest.get('jax_version')}, whose artifacts load with "
                f"jax >= {needed}; this process has jax {jax.__version__}. Upgrade jax, or export again with this "
                f"jax (oat_jax installed): oat_jax.serialization.reexport({self.directory!r}, NEW_DIR).")
        self.horizon = int(self.manifest["horizon"])
        self.action_dim = int(self.manifest["action_dim"])
        self.num_tokens = int(self.manifest["num_tokens"])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.batch_sizes = tuple(int(b) for b in self.manifest["batch_sizes"])
        with np.load(os.path.join(self.directory, PARAMS_FILE)) as data:
            self.params = jax.device_put(_unflatten({k: data[k] for k in data.files}), device)
        self._exported: dict[str, jax_export.Exported] = {}

    def _function(self, name: str, batch_size: int) -> jax_export.Exported:
        if batch_size not in self.batch_sizes:
            raise ValueError(f"{name} was exported for batch sizes {list(self.batch_sizes)}, got a batch of "
                             f"{batch_size}; pad the batch or re-export with batch_sizes including {batch_size}.")
        key = f"{name}_b{batch_size}"
        if key not in self._exported:
            with open(os.path.join(self.directory, self.manifest["files"][key]), "rb") as f:
                data = bytearray(f.read())
            try:
                self._exported[key] = jax_export.deserialize(data)
            except ImportError as e:  # jax reads the artifacts with the flatbuffers package
                raise ImportError(f"Reading {self.directory} needs the 'flatbuffers' package: pip install "
                                  f"'oat_jax[export]' (or flatbuffers). ({e})") from e
        return self._exported[key]

    def tokenize(self, actions) -> jax.Array:
        """Raw actions (B, H, D_a) (any real dtype, finite in float32) -> token ids (B, N) int32.

        Validated like `OATTokenizer.tokenize`, single chunks (H, D_a) also accepted (ValueError for a bad shape,
        dtype or non-finite values)."""
        x, unbatched = input_checks.check_actions(actions, self.horizon, self.action_dim)
        if unbatched:
            raise ValueError(f"actions must have shape (B, {self.horizon}, {self.action_dim}), got "
                             f"{np.shape(actions)}.")
        return self._function("tokenize", x.shape[0]).call(self.params, jnp.asarray(x))

    def detokenize(self, tokens, lengths=None) -> jax.Array:
        """Token ids (B, k) int, 1 <= k <= N, + prefix lengths (None = k, int, or (B,) int in 1..k) -> raw actions
        (B, H, D_a) float32. Stricter than `OATTokenizer.detokenize` (`input_checks.check_tokens`): ids outside
        [0, vocab_size) at kept positions and lengths outside 1..k raise ValueError instead of giving an invalid
        (NaN) example; positions >= length are ignored."""
        if np.ndim(tokens) != 2:
            raise ValueError(f"tokens must have shape (B, k) with 1 <= k <= {self.num_tokens}, got {np.shape(tokens)}.")
        t, lens, _ = input_checks.check_tokens(tokens, lengths, self.num_tokens, self.vocab_size)
        return self._function("detokenize", t.shape[0]).call(self.params, jnp.asarray(t), jnp.asarray(lens))
