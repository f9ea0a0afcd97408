"""Loading and fitting action tokenizers by name: `load_action_tokenizer(path)`, `fit_action_tokenizer(name, ...)`.

A saved tokenizer directory names its type in `action_tokenizer.json` ({"type": "oat" | "bin" | "fast", ...}).
Paths without that file are read as OAT (`OATTokenizer.load`): a tokenizer directory of the first layout, a
training workdir of `experiments.train` (OAT, OAT x or QueST-style; its `tokenizer/`, else a checkpoint) or one
checkpoint step, also at remote URLs (gs://).
"""

from __future__ import annotations

import os

import numpy as np

from oat_jax import artifacts
from oat_jax.action_tokenizers.bin import BinActionTokenizer
from oat_jax.action_tokenizers.fast import FASTActionTokenizer
from oat_jax.action_tokenizers.protocol import ActionTokenizer
from oat_jax.tokenizer import OATTokenizer

TOKENIZER_TYPES = {"oat": OATTokenizer, "bin": BinActionTokenizer, "fast": FASTActionTokenizer}
FITTABLE = ("bin", "fast")  # fitted in seconds from data; learned tokenizers are trained with experiments.train


def load_action_tokenizer(path: str, step=None) -> ActionTokenizer:
    """Loads the tokenizer saved (or trained) at `path`, of any type.

    Args:
      path: a directory written by some tokenizer's `save`, a training workdir or a checkpoint step directory.
      step: for an OAT training workdir only: None (its `tokenizer/`, else the latest checkpoint), 'latest',
        'best' or a step number (see `OATTokenizer.load`).
    Raises:
      FileNotFoundError: nothing at `path`, or nothing loadable there.
      ValueError: an unknown type in action_tokenizer.json, or `step` given for a non-OAT tokenizer.
    """
    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(f"No tokenizer at {path}: the path does not exist. Pass a saved tokenizer directory "
                                f"or a training workdir of experiments.train.")
    description = artifacts.read_type(path)
    kind = "oat" if description is None else description.get("type")
    if kind not in TOKENIZER_TYPES:
        raise ValueError(f"{os.path.join(path, artifacts.TYPE_FILE)} names type {kind!r}; known types: "
                         f"{sorted(TOKENIZER_TYPES)}.")
    if kind == "oat":
        return OATTokenizer.load(path, step, verify=description is None)  # read_type already verified the files
    if step is not None:
        raise ValueError(f"step={step!r} applies to OAT training workdirs only; {path} holds a {kind!r} tokenizer.")
    return TOKENIZER_TYPES[kind].load(path)


def fit_action_tokenizer(name: str, chunks: np.ndarray, **options) -> ActionTokenizer:
    """Fits a data-fitted baseline on raw training chunks (M, H, D_a) float.

    Args:
      name: 'bin' (options: num_bins, normalizer_mode) or 'fast' (options: scale, vocab_size, max_tokens,
        normalizer_mode, min_frequency).
    """
    if name == "oat":
        raise ValueError("OAT-family tokenizers (OAT, OAT x, QueST-style) are trained, not fitted: run python -m "
                         "experiments.train --config=experiments/configs/oat.py[:oatx|:quest] --workdir=DIR and load "
                         "DIR with load_action_tokenizer.")
    if name not in FITTABLE:
        raise ValueError(f"Unknown tokenizer {name!r}; fittable tokenizers: {FITTABLE}.")
    return TOKENIZER_TYPES[name].fit(chunks, **options)
