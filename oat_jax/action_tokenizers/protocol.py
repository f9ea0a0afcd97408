"""The interface every action tokenizer implements (OAT, OAT x, QueST-style, Bin, FAST).

A policy, the tokenizer evaluation report and VLA code talk to tokenizers only through this interface, so any
tokenizer can be swapped in. Token sequences are fixed-width int32 arrays plus per-example lengths (never Python
lists), so variable-length tokenizers (FAST) and prefix decoding (OAT_k) share one representation:

    tokens:  (B, max_tokens) int32, ids in [0, vocab_size); entries at positions >= lengths[b] are PAD_ID (-1)
    lengths: (B,) int32 in [0, max_tokens]
    actions: (B, horizon, action_dim) float32 in raw (unnormalized) units
    valid:   (B,) bool, False where a token sequence does not decode to a finite chunk of the right shape
             (the chunk is then NaN, never silent zeros)

Conventions beyond the Protocol (followed by every implementation in this package):
- `Cls.fit(chunks, **options)` (classmethod, Bin and FAST): fits on raw training chunks (M, H, D_a) float; learned
  tokenizers (OAT, OAT x, QueST-style) are trained with `experiments.train` instead.
- `Cls.load(path)` (classmethod) reads what `save` wrote; `registry.load_action_tokenizer(path)` dispatches on the
  "type" in `path/action_tokenizer.json` (TOKENIZER_FILE) and falls back to OAT for tokenizer dirs / workdirs.
- Token ids outside [0, vocab_size) at positions < length make that example invalid (not an exception); a tokens
  array of the wrong rank/dtype/width or lengths outside [0, width] raise ValueError.
- `lengths` = 0 is never valid (no tokens carry no chunk).

Report convention (optional methods, not part of the runtime-checked Protocol; every tokenizer of this package has
them, and `oat_jax.eval.tokenizer_report` uses them where present, so it never branches on `name`):
- `report_prefix_lengths(self) -> list[int]`: the token counts k at which the report measures the rate-distortion
  curve (MSE of detokenizing the first k tokens): OAT 1..N, Bin whole steps D_a * (1, 2, 4, ..., H), FAST [] (its
  prefixes do not decode). Missing: [].
- `diagnostics(self, chunks, reconstruction, valid) -> dict`: the tokenizer's own report section, from raw chunks
  (B, H, D_a), their full-length round trip (B, H, D_a) float32 (NaN where invalid) and valid (B,) bool; a dict of
  JSON-able values merged into that tokenizer's entry of report.json: OAT {"config": ...}, Bin {"bin_bound": ...},
  FAST {"fast_quantization": ...}. Missing: {}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from oat_jax import integrity

PAD_ID = -1  # fill value of `tokens` past each example's length.
TOKENIZER_FILE = "action_tokenizer.json"  # {"type": "oat" | "bin" | "fast", ...} in every saved tokenizer dir.


@runtime_checkable
class ActionTokenizer(Protocol):
    """Structural type of an action tokenizer; see the module docstring for array conventions."""

    name: str  # short registry name: "oat", "bin", "fast" (QueST-style and OAT x are "oat" with other configs).

    @property
    def vocab_size(self) -> int:
        """Number of token ids; every id is in [0, vocab_size)."""

    @property
    def max_tokens(self) -> int:
        """Longest token sequence of one chunk (the width of `tokens`)."""

    @property
    def fixed_length(self) -> bool:
        """True when every chunk has exactly `max_tokens` tokens (OAT, Bin); False for FAST."""

    @property
    def horizon(self) -> int:
        """H, time steps per chunk."""

    @property
    def action_dim(self) -> int:
        """D_a, action dimensions."""

    def tokenize(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, D_a) float raw actions -> tokens (B, max_tokens) int32 (PAD_ID-padded), lengths (B,) int32."""

    def detokenize(self, tokens: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """tokens (B, max_tokens) int32 (+ lengths (B,), default: count of non-PAD entries) -> actions (B, H, D_a)
        float32 raw units, valid (B,) bool. For OAT, a shorter length decodes that prefix (OAT_k)."""

    def save(self, path: str) -> str:
        """Write a self-describing directory (holds `action_tokenizer.json` naming the type); returns the path."""


def lengths_from_tokens(tokens: np.ndarray) -> np.ndarray:
    """(B, W) int tokens -> (B,) int32: the number of non-PAD entries of each row (the default `lengths`)."""
    return np.sum(np.asarray(tokens) != PAD_ID, axis=-1).astype(np.int32)


def check_token_batch(tokens, lengths, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Validates detokenize inputs and brings them to the canonical form.

    Args:
      tokens: (B, W) integer array, W <= max_tokens (narrower arrays are PAD-padded to max_tokens).
      lengths: None (count of non-PAD entries per row) or an int / (B,) integer array in [0, W].
      max_tokens: the tokenizer's `max_tokens`.
    Returns:
      tokens (B, max_tokens) int64 with PAD_ID at positions >= lengths, lengths (B,) int32.
    Raises:
      ValueError naming the problem (rank, dtype, width, lengths shape or range). Ids are not range-checked here:
      an out-of-range id makes its example invalid in `detokenize`.
    """
    t = np.asarray(tokens)
    if t.ndim != 2 or not (np.issubdtype(t.dtype, np.integer) or t.size == 0):
        raise ValueError(f"tokens must be a 2-D integer array (B, W) with W <= max_tokens={max_tokens}, got shape "
                         f"{t.shape} and dtype {t.dtype}; add a batch axis for a single sequence.")
    if t.shape[1] > max_tokens:
        raise ValueError(f"tokens have width {t.shape[1]} but this tokenizer's max_tokens is {max_tokens}; cut "
                         f"the sequences to at most {max_tokens} tokens.")
    t = t.astype(np.int64)
    if lengths is None:
        lens = lengths_from_tokens(t)
    else:
        lens = np.asarray(lengths)
        if not np.issubdtype(lens.dtype, np.integer):
            raise ValueError(f"lengths must be integers, got dtype {lens.dtype}.")
        if lens.ndim > 1 or (lens.ndim == 1 and lens.shape[0] != t.shape[0]):
            raise ValueError(f"lengths must be an int or a ({t.shape[0]},) array, got shape {lens.shape}.")
        lens = np.broadcast_to(lens, (t.shape[0],)).astype(np.int32)
    if lens.size and (lens.min() < 0 or lens.max() > t.shape[1]):
        raise ValueError(f"lengths must be in [0, {t.shape[1]}] (the width of tokens), got values in "
                         f"[{lens.min()}, {lens.max()}].")
    out = np.full((t.shape[0], max_tokens), PAD_ID, np.int64)
    kept = np.arange(t.shape[1])[None, :] < lens[:, None]
    out[:, :t.shape[1]] = np.where(kept, t, PAD_ID)
    return out, lens.astype(np.int32)


def pad_sequences(sequences, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """A list of 1-D int sequences (each at most max_tokens long) -> tokens (B, max_tokens) int32, PAD_ID-padded,
    and lengths (B,) int32."""
    tokens = np.full((len(sequences), max_tokens), PAD_ID, np.int32)
    lengths = np.zeros((len(sequences),), np.int32)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, np.int64)
        if len(seq) > max_tokens:
            raise ValueError(f"sequence {i} has {len(seq)} tokens, more than max_tokens={max_tokens}.")
        tokens[i, :len(seq)] = seq
        lengths[i] = len(seq)
    return tokens, lengths


def check_actions(actions, horizon: int, action_dim: int) -> np.ndarray:
    """Validates raw action chunks for `tokenize`: -> (B, H, D_a) float32 (finite), or ValueError naming the problem."""
    x = np.asarray(actions)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"actions must be a real-valued numeric array, got dtype {x.dtype}.")
    if x.ndim != 3 or x.shape[1:] != (horizon, action_dim):
        raise ValueError(f"actions must have shape (B, {horizon}, {action_dim}) = (batch, horizon, action_dim), got "
                         f"{x.shape}; add a batch axis for a single chunk.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"actions contain {int(np.sum(~np.isfinite(x)))} NaN/Inf values; tokenize finite actions.")
    return x.astype(np.float32)


def nan_chunks(batch: int, horizon: int, action_dim: int) -> np.ndarray:
    """(batch, H, D_a) float32 of NaN: what `detokenize` returns for invalid sequences."""
    return np.full((batch, horizon, action_dim), np.nan, np.float32)


def write_tokenizer_json(path: str, description: dict[str, Any], files: Mapping[str, str] | None = None) -> str:
    """Writes `description` (with a "type" key) to `path/action_tokenizer.json` and the text `files` (name ->
    content) beside it, creating `path`, then the directory's integrity manifest (`oat_jax.integrity`); returns the
    absolute directory path."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    for name, text in (files or {}).items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    with open(os.path.join(path, TOKENIZER_FILE), "w") as f:
        json.dump(description, f, indent=1)
    integrity.write_manifest(path)
    return path


def read_tokenizer_json(path: str, expected_type: str | None = None) -> dict[str, Any] | None:
    """The dict in `path/action_tokenizer.json`, or None when `path` has no such file.

    The directory's files are first checked against its integrity manifest (integrity.IntegrityError, a
    ValueError naming a damaged file). Raises (only when `expected_type` is given): FileNotFoundError if the file is
    missing, ValueError if it names another type.
    """
    file = os.path.join(os.fspath(path), TOKENIZER_FILE)
    if not os.path.exists(file):
        if expected_type is not None:
            raise FileNotFoundError(f"No {TOKENIZER_FILE} in {path}: not a saved {expected_type!r} tokenizer; write "
                                    f"one with .save(path).")
        return None
    integrity.verify(os.fspath(path), "action tokenizer")
    try:
        with open(file) as f:
            description = json.load(f)
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); save the tokenizer again.") from e
    if expected_type is not None and description.get("type") != expected_type:
        raise ValueError(f"{file} describes a {description.get('type')!r} tokenizer, not {expected_type!r}; load it "
                         f"with oat_jax.action_tokenizers.load_action_tokenizer.")
    return description
