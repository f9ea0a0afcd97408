"""Loading and fitting action tokenizers by name: `load_action_tokenizer(path)`, `fit_action_tokenizer(name, ...)`.

A saved tokenizer directory names its type in `action_tokenizer.json` ({"type": "oat" | "bin" | "fast", ...}).
Directories without that file are read as OAT: an exported `OATTokenizer` directory, or a training workdir of
`experiments.train` (OAT, OAT x or QueST-style; its `tokenizer/`, else a checkpoint), also at remote URLs (gs://).
"""

from __future__ import annotations

import os

import numpy as np

from oat_jax.action_tokenizers.bin import BinActionTokenizer
from oat_jax.action_tokenizers.fast import FASTActionTokenizer
from oat_jax.action_tokenizers.oat import OATActionTokenizer
from oat_jax.action_tokenizers.protocol import TOKENIZER_FILE, ActionTokenizer, read_tokenizer_json

TOKENIZER_TYPES = {"oat": OATActionTokenizer, "bin": BinActionTokenizer, "fast": FASTActionTokenizer}
FITTABLE = ("bin", "fast")  # fitted in seconds from data; learned tokenizers are trained with experiments.train


def load_action_tokenizer(path: str, step=None) -> ActionTokenizer:
    """Loads the tokenizer saved (or trained) at `path`.

    Args:
      path: a directory written by some tokenizer's `save`, an OAT tokenizer directory or a training workdir.
      step: for an OAT training workdir only: None (its `tokenizer/`, else the latest checkpoint), 'latest',
        'best' or a step number (see `oat_jax.load_pretrained`).
    Raises:
      FileNotFoundError: nothing at `path`, or nothing loadable there.
      ValueError: an unknown type in action_tokenizer.json, or `step` given for a non-OAT tokenizer.
    """
    path = os.fspath(path)
    if "://" in path:  # remote: only OAT tokenizers / workdirs (read through etils by load_pretrained)
        return OATActionTokenizer.load(path, step)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No tokenizer at {path}: the path does not exist. Pass a saved tokenizer directory "
                                f"or a training workdir of experiments.train.")
    description = read_tokenizer_json(path)
    if description is None:
        return OATActionTokenizer.load(path, step)
    kind = description.get("type")
    if kind not in TOKENIZER_TYPES:
        raise ValueError(f"{os.path.join(path, TOKENIZER_FILE)} names type {kind!r}; known types: "
                         f"{sorted(TOKENIZER_TYPES)}.")
    if kind == "oat":
        return OATActionTokenizer.load(path, step)
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
