"""Validation of the tokenizer's inputs, shared by `OATTokenizer` and `ExportedTokenizer`: every bad input is a
ValueError that says what was wrong and what to pass instead."""

from __future__ import annotations

from typing import Union

import numpy as np

Lengths = Union[None, int, np.ndarray]


def _as_float32(x: np.ndarray) -> np.ndarray:
    """Any real array (float16/32/64, bfloat16 and other ml_dtypes floats, integers) -> float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float32)


def _is_real(dtype: np.dtype) -> bool:
    if dtype == object:
        return False
    if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer):
        return True
    try:  # bfloat16 / float8 from ml_dtypes are not numpy floating subtypes
        import ml_dtypes
        return any(dtype == np.dtype(getattr(ml_dtypes, n)) for n in ("bfloat16", "float8_e4m3fn", "float8_e5m2")
                   if hasattr(ml_dtypes, n))
    except ImportError:
        return False


def check_actions(actions, horizon: int, action_dim: int) -> tuple[np.ndarray, bool]:
    """Raw actions (B, H, D_a) or (H, D_a), any real dtype -> ((B, H, D_a) float32, unbatched).

    Raises ValueError for a non-numeric dtype, a wrong shape, or values that are not finite in float32 (NaN, Inf, or
    finite float64 values beyond float32's range, which would silently become Inf)."""
    x = np.asarray(actions)
    if not _is_real(x.dtype):
        raise ValueError(f"actions must be a real-valued numeric array, got dtype {x.dtype}.")
    if x.ndim not in (2, 3):
        raise ValueError(f"actions must have shape (B, H, D_a) or (H, D_a) = (..., {horizon}, {action_dim}), got "
                         f"{x.shape}.")
    if x.shape[-1] != action_dim:
        raise ValueError(f"actions have action dim {x.shape[-1]} (last axis of shape {x.shape}) but the tokenizer "
                         f"expects action_dim={action_dim}.")
    if x.shape[-2] != horizon:
        raise ValueError(f"actions have horizon {x.shape[-2]} (axis -2 of shape {x.shape}) but the tokenizer "
                         f"expects horizon={horizon}; cut or pad the chunk to {horizon} steps.")
    x32 = _as_float32(x)
    if not np.all(np.isfinite(x32)):
        n_nan, n_inf = int(np.isnan(x32).sum()), int(np.isinf(x32).sum())
        n_big = int(np.sum(np.isfinite(x.astype(np.float64)) & ~np.isfinite(x32)))
        detail = f" ({n_big} of them finite {x.dtype} values beyond float32's range +-3.4e38)" if n_big else ""
        raise ValueError(f"actions contain {n_nan} NaN and {n_inf} Inf values in float32{detail}; tokenize finite "
                         f"actions only.")
    unbatched = x.ndim == 2
    return (x32[None] if unbatched else x32), unbatched


def check_lengths(lengths: Lengths, batch: int, max_len: int, num_tokens: int) -> np.ndarray:
    """Prefix lengths None / int / (B,) integers -> (B,) int32 in 1..max_len, or ValueError."""
    if lengths is None:
        return np.full((batch,), max_len, np.int32)
    arr = np.asarray(lengths)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"prefix lengths must be integers, got dtype {arr.dtype}.")
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != batch):
        raise ValueError(f"prefix lengths must be an int or a ({batch},) array, got shape {arr.shape}.")
    arr = np.broadcast_to(arr, (batch,))
    if batch and (arr.min() < 1 or arr.max() > max_len):
        bad = int(arr.min()) if arr.min() < 1 else int(arr.max())
        limit = (f"the number of tokens given ({max_len})" if max_len < num_tokens
                 else f"N = num_tokens ({num_tokens})")
        raise ValueError(f"prefix length {bad} is out of range: every prefix length must be >= 1 and <= {limit}.")
    return arr.astype(np.int32)


def check_tokens(tokens, lengths: Lengths, num_tokens: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Token ids (B, k) or (k,), 1 <= k <= N, + prefix lengths -> (tokens (B, N) int32 padded with 0, lengths (B,)
    int32, unbatched); ValueError for non-integer ids, a bad shape, bad lengths or ids outside [0, vocab_size)."""
    t = np.asarray(tokens)
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array of token ids, got dtype {t.dtype}.")
    if t.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape (B, k) or (k,) with 1 <= k <= {num_tokens}, got {t.shape}.")
    unbatched = t.ndim == 1
    t = t[None] if unbatched else t
    k = t.shape[1]
    if not 1 <= k <= num_tokens:
        raise ValueError(f"prefix length {k} (tokens of shape {np.shape(tokens)}) is out of range: pass between 1 "
                         f"and N = {num_tokens} tokens per chunk.")
    lens = check_lengths(lengths, t.shape[0], k, num_tokens)
    kept = np.arange(k)[None, :] < lens[:, None]
    bad = kept & ((t < 0) | (t >= vocab_size))
    if bad.any():
        raise ValueError(f"token ids must be in [0, vocab_size={vocab_size}); got {int(bad.sum())} id(s) outside, "
                         f"e.g. {int(t[bad][0])}.")
    padded = np.zeros((t.shape[0], num_tokens), np.int32)
    padded[:, :k] = np.where(kept, t, 0)
    return padded, lens, unbatched
