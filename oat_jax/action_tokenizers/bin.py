"""`BinActionTokenizer`: uniform per-dimension binning (RT-2 / OpenVLA style), the long-but-total baseline.

Each action value is normalized per dimension to [-1, 1] with the dataset's min/max (`Normalizer` 'limits',
fitted on the training chunks), cut into `num_bins` equal bins of width w = 2 / num_bins (values outside [-1, 1]
fall into the edge bins) and decoded as the bin centre -1 + (i + 1/2) w. Tokens are time-major: token t * D_a + d
holds step t, dimension d, so every chunk is H * D_a tokens (128 for Meta-World, 224 for 7-D actions).

Decoding is total: every sequence of in-range ids of any length 1..H*D_a decodes. A shorter sequence is a prefix in
time: the steps it does not reach hold the last decoded value of each dimension (what a robot does when a policy
stops early), and a dimension with no decoded value at all (length < D_a) takes the middle of its range
(normalized 0). Length 0 and ids outside [0, num_bins) are invalid.

Analytic error (for values inside the fitted range): |error| <= w / 2 per element in normalized units; for values
spread evenly inside their bins the mean squared error is w^2 / 12.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from oat_jax.action_tokenizers.protocol import nan_chunks
from oat_jax.artifacts import read_type, write_typed_directory
from oat_jax.input_checks import check_action_batch, check_token_batch
from oat_jax.normalizer import Normalizer


class BinActionTokenizer:
    """Uniform binning tokenizer; implements `ActionTokenizer`.

    Args:
      normalizer: maps raw actions (..., D_a) to [-1, 1] (mode 'limits' for the paper's baseline).
      horizon: H, steps per chunk.
      num_bins: bins per dimension = vocabulary size (default 256).
    """

    name = "bin"

    def __init__(self, normalizer: Normalizer, horizon: int, num_bins: int = 256):
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}.")
        if int(horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}.")
        self.normalizer = normalizer
        self._horizon = int(horizon)
        self.num_bins = int(num_bins)

    @classmethod
    def fit(cls, chunks: np.ndarray, num_bins: int = 256, normalizer_mode: str = "limits") -> "BinActionTokenizer":
        """Fits the per-dimension normalizer on raw training chunks (M, H, D_a) float."""
        chunks = np.asarray(chunks)
        if chunks.ndim != 3 or chunks.shape[0] == 0:
            raise ValueError(f"Bin fit needs raw training chunks of shape (M, H, D_a), got {chunks.shape}.")
        return cls(Normalizer.fit(chunks, normalizer_mode), chunks.shape[1], num_bins)

    # ----- sizes -----
    @property
    def vocab_size(self) -> int:
        """num_bins."""
        return self.num_bins

    @property
    def max_tokens(self) -> int:
        """H * D_a."""
        return self._horizon * self.action_dim

    @property
    def fixed_length(self) -> bool:
        """Always True: every chunk is H * D_a tokens."""
        return True

    @property
    def horizon(self) -> int:
        """H."""
        return self._horizon

    @property
    def action_dim(self) -> int:
        """D_a."""
        return self.normalizer.action_dim

    @property
    def bin_width(self) -> float:
        """w = 2 / num_bins, in normalized units."""
        return 2.0 / self.num_bins

    # ----- tokenize / detokenize -----
    def tokenize(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw actions (B, H, D_a) -> tokens (B, H*D_a) int32 (time-major: index t*D_a + d), lengths (B,) = H*D_a."""
        x = self.normalizer.normalize(check_action_batch(actions, self.horizon, self.action_dim))
        ids = np.clip(np.floor((x + 1.0) / self.bin_width), 0, self.num_bins - 1).astype(np.int32)
        batch = ids.shape[0]
        return ids.reshape(batch, self.max_tokens), np.full((batch,), self.max_tokens, np.int32)

    def device_tokenizer(self):
        """(fn, params) with `fn(params, actions)`: raw actions (B, H, D_a) float32 -> tokens (B, H*D_a) int32,
        lengths (B,) int32 in pure jax (jit-traceable; the bins of `tokenize`; params is empty)."""
        normalizer, width, bins, n = self.normalizer, self.bin_width, self.num_bins, self.max_tokens

        def tokenize(params, actions):
            del params
            x = normalizer.normalize(actions.astype(jnp.float32))
            ids = jnp.clip(jnp.floor((x + 1.0) / width), 0, bins - 1).astype(jnp.int32)
            return ids.reshape(ids.shape[0], n), jnp.full(ids.shape[:1], n, jnp.int32)

        return tokenize, {}

    def detokenize(self, tokens: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """tokens (B, W <= H*D_a) int (+ lengths (B,) in [0, W], default: non-PAD count) -> raw actions
        (B, H, D_a) float32, valid (B,) bool. Bin centres; a prefix holds its last value (module docstring)."""
        t, lens = check_token_batch(tokens, lengths, self.max_tokens)
        batch, horizon, dim = t.shape[0], self.horizon, self.action_dim
        kept = np.arange(self.max_tokens)[None, :] < lens[:, None]
        in_range = (t >= 0) & (t < self.num_bins)
        valid = (lens > 0) & np.all(in_range | ~kept, axis=1)
        centres = -1.0 + (np.where(kept & in_range, t, 0) + 0.5) * self.bin_width
        centres = centres.reshape(batch, horizon, dim)
        # Hold: each (step, dim) takes the value of the last decoded step of that dim (0 if none is decoded).
        decoded = kept.reshape(batch, horizon, dim)
        last = np.where(decoded, np.arange(horizon)[None, :, None], -1)
        last = np.maximum.accumulate(last, axis=1)
        held = np.take_along_axis(centres, np.maximum(last, 0), axis=1)
        normalized = np.where(last >= 0, held, 0.0).astype(np.float32)
        actions = np.where(valid[:, None, None], self.normalizer.unnormalize(normalized),
                           nan_chunks(batch, horizon, dim))
        return actions.astype(np.float32), valid

    # ----- report convention (see protocol.py) -----
    def report_prefix_lengths(self) -> list[int]:
        """Token counts at which the tokenizer report measures the rate-distortion curve: whole steps,
        D_a * (1, 2, 4, ..., H) (the last one H itself when H is not a power of two)."""
        steps = [min(1 << i, self.horizon) for i in range((self.horizon - 1).bit_length() + 1)]
        return [s * self.action_dim for s in steps]

    def diagnostics(self, chunks: np.ndarray, reconstruction: np.ndarray, valid: np.ndarray) -> dict:
        """The Bin section of the tokenizer report: the measured error against the analytic bound.

        Args:
          chunks: (B, H, D_a) raw actions; reconstruction: (B, H, D_a) float32 their full-length round trip;
            valid: (B,) bool (unused: Bin decodes every full-length sequence).
        Returns:
          {"bin_bound": {"bin_width": w, "half_width": w / 2, "uniform_mse": w^2 / 12 (normalized units),
           "max_abs_error_in_range": largest |error| on values inside the fitted range, "mse_norm_own": MSE in this
           tokenizer's normalized units, "fraction_out_of_range", "fraction_at_range_limits": of the values}}.
        """
        del valid
        x = self.normalizer.normalize(np.asarray(chunks))
        inside = (x >= -1.0) & (x <= 1.0)
        err = np.abs(self.normalizer.normalize(np.asarray(reconstruction)) - x)
        return {"bin_bound": {
            "bin_width": self.bin_width, "half_width": self.bin_width / 2, "uniform_mse": self.bin_width ** 2 / 12,
            "max_abs_error_in_range": float(err[inside].max()) if inside.any() else float("nan"),
            "mse_norm_own": float(np.mean(np.square(err))),
            "fraction_out_of_range": float(1.0 - inside.mean()),
            "fraction_at_range_limits": float(np.mean(np.abs(x) >= 1.0 - 1e-6))}}

    # ----- persistence -----
    def to_dict(self) -> dict:
        """JSON-able description (the content of action_tokenizer.json)."""
        return {"type": self.name, "horizon": self.horizon, "num_bins": self.num_bins,
                "normalizer": self.normalizer.to_dict()}

    def save(self, path: str) -> str:
        """Writes `path/action_tokenizer.json`; returns the absolute directory path."""
        return write_typed_directory(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "BinActionTokenizer":
        """Reads a directory written by `save` (FileNotFoundError / ValueError when it is not one)."""
        d = read_type(path, cls.name)
        return cls(Normalizer.from_dict(d["normalizer"]), d["horizon"], d["num_bins"])

    def __repr__(self) -> str:
        return (f"BinActionTokenizer(H={self.horizon}, D_a={self.action_dim}, num_bins={self.num_bins}, "
                f"max_tokens={self.max_tokens})")

