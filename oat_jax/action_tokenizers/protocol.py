"""The interface every action tokenizer implements: `oat_jax.OATTokenizer` (OAT, OAT x, QueST-style), Bin, FAST.

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
- `Cls.load(path)` (classmethod) reads what `save` wrote; `load_action_tokenizer(path)` loads any kind: it
  dispatches on the "type" in `path/action_tokenizer.json` (`oat_jax.artifacts.TYPE_FILE`) and reads OAT training
  workdirs and checkpoint steps (which have no type file) as OAT.
- Report hooks (used by `oat_jax.eval`): `report_prefix_lengths()` and `diagnostics(chunks, reconstruction, valid)`.
- `device_tokenizer() -> (fn, params)` (optional; OAT and Bin): `fn(params, actions)` tokenizes raw (B, H, D_a)
  float32 chunks to (tokens, lengths) in pure jax, so a policy's train step makes its targets on the device from
  streamed chunks. Without it (FAST: its BPE runs in Python) the host tokenizes each streamed batch.
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

from typing import Protocol, runtime_checkable

import numpy as np

from oat_jax.input_checks import PAD_ID


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


def nan_chunks(batch: int, horizon: int, action_dim: int) -> np.ndarray:
    """(batch, H, D_a) float32 of NaN: what `detokenize` returns for invalid sequences."""
    return np.full((batch, horizon, action_dim), np.nan, np.float32)
