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


def token_statistics(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> dict:
    """Per-position token distribution statistics over a set of real sequences.

    Returns:
      {"entropy_bits": list per position (Shannon entropy of the ids seen there; NaN where no sequence reaches),
       "usage": list per position (fraction of the vocabulary seen there), "count": list per position,
       "usage_total": fraction of the vocabulary seen at any position, "mean_entropy_bits": mean over the reached
       positions, "max_entropy_bits": log2(vocab_size)}.
    """
    tokens = np.asarray(tokens, np.int64)
    lengths = np.asarray(lengths)
    kept = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    entropy, usage, count = [], [], []
    for p in range(tokens.shape[1]):
        ids = tokens[kept[:, p], p]
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        count.append(int(ids.size))
        if ids.size == 0:
            entropy.append(float("nan"))
            usage.append(0.0)
            continue
        freq = np.bincount(ids, minlength=vocab_size).astype(np.float64)
        prob = freq[freq > 0] / ids.size
        entropy.append(float(-np.sum(prob * np.log2(prob))))
        usage.append(float(np.count_nonzero(freq) / vocab_size))
    seen = tokens[kept]
    seen = seen[(seen >= 0) & (seen < vocab_size)]
    reached = [e for e in entropy if not np.isnan(e)]
    return {"entropy_bits": entropy, "usage": usage, "count": count,
            "usage_total": float(np.unique(seen).size / vocab_size),
            "mean_entropy_bits": float(np.mean(reached)) if reached else float("nan"),
            "max_entropy_bits": float(np.log2(vocab_size))}
