"""Tokenizer-agnostic evaluation metrics (pure numpy): reconstruction error, decodability probes, token statistics.

Every function works on the `ActionTokenizer` array conventions (tokens (B, W) int with PAD_ID past lengths (B,)).
"""

from __future__ import annotations

import numpy as np

from oat_jax.action_tokenizers.protocol import PAD_ID


def per_chunk_mse(recon: np.ndarray, target: np.ndarray) -> np.ndarray:
    """recon, target (B, H, D_a) -> (B,) float64 mean squared error per chunk (NaN where recon is NaN)."""
    diff = np.asarray(recon, np.float64) - np.asarray(target, np.float64)
    return np.mean(np.square(diff), axis=(1, 2))


def total_variance(chunks: np.ndarray) -> float:
    """Mean over (step, dim) of the variance over chunks of (M, H, D_a): the MSE of predicting the mean chunk."""
    return float(np.mean(np.var(np.asarray(chunks, np.float64), axis=0)))


def variance_explained(mse: float, variance: float) -> float:
    """1 - mse / variance: the fraction of the chunks' variance a reconstruction explains (1 = perfect)."""
    return float(1.0 - mse / variance) if variance > 0 else float("nan")


def decodable(actions: np.ndarray, valid: np.ndarray, horizon: int, action_dim: int) -> np.ndarray:
    """(B,) bool: valid and finite chunks of shape (H, D_a) (what a robot could execute)."""
    actions = np.asarray(actions)
    if actions.ndim != 3 or actions.shape[1:] != (horizon, action_dim):
        return np.zeros((len(valid),), bool)
    return np.asarray(valid, bool) & np.all(np.isfinite(actions), axis=(1, 2))


def random_sequences(rng: np.random.Generator, vocab_size: int, max_tokens: int, length: int,
                     count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` sequences of `length` ids drawn uniformly from [0, vocab_size): tokens (count, max_tokens) int64
    (PAD-padded), lengths (count,) int32."""
    tokens = np.full((count, max_tokens), PAD_ID, np.int64)
    tokens[:, :length] = rng.integers(0, vocab_size, size=(count, length))
    return tokens, np.full((count,), length, np.int32)


def replace_one_token(rng: np.random.Generator, tokens: np.ndarray, lengths: np.ndarray,
                      vocab_size: int) -> np.ndarray:
    """Copies of real sequences with one token (a uniform position < length) replaced by a different uniform id.

    Returns:
      tokens (B, W) int64; rows with length 0 are unchanged.
    """
    out = np.array(tokens, np.int64)
    lengths = np.asarray(lengths)
    rows = np.flatnonzero(lengths > 0)
    pos = (rng.random(len(rows)) * lengths[rows]).astype(np.int64)
    shift = rng.integers(1, vocab_size, size=len(rows))  # never 0: the new id differs from the old one
    out[rows, pos] = (out[rows, pos] + shift) % vocab_size
    return out


def truncate_sequences(rng: np.random.Generator, tokens: np.ndarray,
                       lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real sequences cut at a uniform position in 1..length-1 (at least one token kept, at least one dropped).

    Returns:
      tokens (B, W) int64 with PAD_ID past the cut, new lengths (B,) int32, and a (B,) bool mask of the rows that
      could be truncated (length >= 2; the others are returned unchanged and should be left out of the fraction).
    """
    lengths = np.asarray(lengths, np.int64)
    ok = lengths >= 2
    cut = np.where(ok, 1 + (rng.random(len(lengths)) * np.maximum(lengths - 1, 1)).astype(np.int64), lengths)
    out = np.array(tokens, np.int64)
    out[np.arange(out.shape[1])[None, :] >= cut[:, None]] = PAD_ID
    return out, cut.astype(np.int32), ok


def position_counts(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> np.ndarray:
    """Histogram of the ids at every position of real sequences.

    Args:
      tokens: (B, W) int ids, PAD_ID (or anything) past each row's length.
      lengths: (B,) int in [0, W].
      vocab_size: V.
    Returns:
      (W, V) int64: [p, i] = how many sequences hold id i at position p < length (ids outside [0, V) not counted).
    """
    tokens = np.asarray(tokens, np.int64)
    width = tokens.shape[1]
    kept = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]) & (tokens >= 0) & (tokens < vocab_size)
    flat = np.broadcast_to(np.arange(width)[None, :], tokens.shape)[kept] * vocab_size + tokens[kept]
    return np.bincount(flat, minlength=width * vocab_size).reshape(width, vocab_size).astype(np.int64)


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each row of counts (or non-negative weights): the one per-position entropy of
    this package (the report shows bits; policy statistics convert to nats, training logs perplexity 2**bits).

    Args:
      counts: (..., V) non-negative counts or weights, e.g. `position_counts` (W, V).
    Returns:
      (...) float64 entropy of each row normalized to a distribution; NaN where a row sums to 0.
    """
    counts = np.asarray(counts, np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    prob = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    logs = np.log2(prob, out=np.zeros_like(prob), where=prob > 0)
    entropy = np.maximum(-np.sum(prob * logs, axis=-1), 0.0)
    return np.where(total[..., 0] > 0, entropy, np.nan)


def token_statistics(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> dict:
    """Per-position token distribution statistics over a set of real sequences.

    Args:
      tokens: (B, W) int ids, PAD_ID past lengths; lengths: (B,) int; vocab_size: V.
    Returns:
      {"entropy_bits": list per position (Shannon entropy of the ids seen there; NaN where no sequence reaches),
       "usage": list per position (fraction of the vocabulary seen there), "count": list per position,
       "usage_total": fraction of the vocabulary seen at any position, "mean_entropy_bits": mean over the reached
       positions, "max_entropy_bits": log2(vocab_size)}.
    """
    counts = position_counts(tokens, lengths, vocab_size)
    per_position = counts.sum(axis=1)
    entropy = entropy_bits(counts)
    reached = entropy[per_position > 0]
    return {"entropy_bits": [float(e) for e in entropy],
            "usage": [float(u) for u in np.count_nonzero(counts, axis=1) / vocab_size],
            "count": [int(c) for c in per_position],
            "usage_total": float(np.count_nonzero(counts.sum(axis=0)) / vocab_size),
            "mean_entropy_bits": float(np.mean(reached)) if reached.size else float("nan"),
            "max_entropy_bits": float(np.log2(vocab_size))}
