"""Finite Scalar Quantization (FSQ) as pure functions, plus a thin parameter-free linen module.

Levels L = (L_0, ..., L_{d-1}): channel i of a latent is bounded, rounded to one of L_i integers and rescaled to
[-1, 1]. A code vector maps to one token id with channel 0 as the least significant digit. Everything here is
computed in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_BOUND_EPS = 1e-3


def vocab_size(levels: Sequence[int]) -> int:
    """Number of distinct codes (token ids) for `levels`: prod(levels)."""
    return math.prod(int(v) for v in levels)


def _levels(levels: Sequence[int]) -> np.ndarray:
    arr = np.asarray(levels, dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0 or np.any(arr < 2):
        raise ValueError(f"FSQ levels must be a non-empty list of ints >= 2, got {list(levels)}.")
    return arr


def _basis(levels: np.ndarray) -> np.ndarray:
    return np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int64)


def bound(z: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Squashes latents so that rounding yields exactly L_i values per channel.

    Args:
      z: (..., d) latents, any float dtype.
      levels: d ints >= 2.
    Returns:
      (..., d) float32 in [-(L//2), L//2] (odd L) or [-(L//2), L//2 - 1] after rounding (even L).
    """
    lv = _levels(levels).astype(np.float32)
    half = (lv - 1.0) * (1.0 + _BOUND_EPS) / 2.0
    offset = np.where(lv % 2 == 0, 0.5, 0.0).astype(np.float32)
    shift = np.arctanh(offset / half).astype(np.float32)
    return jnp.tanh(jnp.asarray(z, jnp.float32) + shift) * half - offset


def round_ste(x: jax.Array) -> jax.Array:
    """Rounds to the nearest integer with a straight-through (identity) gradient."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(z: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Quantizes latents to the FSQ grid with a straight-through gradient.

    Args:
      z: (..., d) latents.
      levels: d ints >= 2.
    Returns:
      codes: (..., d) float32; channel i takes values (j - L_i//2) / (L_i//2), j = 0..L_i-1 (within [-1, 1]).
    """
    lv = _levels(levels)
    return round_ste(bound(z, levels)) / (lv // 2).astype(np.float32)


def codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Maps grid codes to token ids.

    Args:
      codes: (..., d) float, values on the FSQ grid (as returned by `quantize`).
      levels: d ints >= 2.
    Returns:
      (...) int32 ids in [0, prod(levels)); channel 0 is the least significant digit.
    """
    lv = _levels(levels)
    half = (lv // 2).astype(np.float32)
    digits = jnp.round(jnp.asarray(codes, jnp.float32) * half + half).astype(jnp.int32)
    return jnp.sum(digits * jnp.asarray(_basis(lv), jnp.int32), axis=-1).astype(jnp.int32)


def indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Maps token ids to grid codes (inverse of `codes_to_indices`).

    Args:
      indices: (...) integer ids. Ids in [0, prod(levels)) round-trip exactly; any other integer still maps to a
        valid grid code (digit-wise modulo), so the map is total.
      levels: d ints >= 2.
    Returns:
      (..., d) float32 codes.
    """
    lv = _levels(levels)
    idx = jnp.asarray(indices, jnp.int32)[..., None]
    digits = (idx // jnp.asarray(_basis(lv), jnp.int32)) % jnp.asarray(lv, jnp.int32)
    half = (lv // 2).astype(np.float32)
    return (digits.astype(jnp.float32) - half) / half


class FSQ(nn.Module):
    """Parameter-free FSQ layer: latents (..., d) -> (codes (..., d) float32, tokens (...) int32)."""

    levels: tuple[int, ...]

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        codes = quantize(z, self.levels)
        return codes, codes_to_indices(codes, self.levels)
