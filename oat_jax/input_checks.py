"""Validation of every action tokenizer's inputs (OAT, Bin, FAST and the exported OAT functions): every bad input
is a ValueError that says what was wrong and what to pass instead."""

from __future__ import annotations

from typing import Union

import numpy as np

Lengths = Union[None, int, np.ndarray]
PAD_ID = -1  # fill value of `tokens` past each example's length (the ActionTokenizer convention)


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


def check_action_batch(actions, horizon: int, action_dim: int) -> np.ndarray:
    """Raw action chunks (B, H, D_a), any real dtype -> (B, H, D_a) float32 (`check_actions` without the unbatched
    form: the `ActionTokenizer` methods take batches)."""
    if np.ndim(actions) != 3:
        raise ValueError(f"actions must have shape (B, {horizon}, {action_dim}) = (batch, horizon, action_dim), got "
                         f"{np.shape(actions)}; add a batch axis for a single chunk.")
    return check_actions(actions, horizon, action_dim)[0]


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
