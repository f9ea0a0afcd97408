"""`FASTActionTokenizer`: DCT + byte-pair encoding (FAST, Pertsch et al. 2025), the short-but-partial baseline.

Tokenize: normalize each dimension to [-1, 1] (`Normalizer`, 'limits' by default, 'quantile' as in FAST),
orthonormal DCT-II over the H steps of each dimension, multiply by `scale` (default 10) and round to integers,
flatten frequency-major (coefficient f * D_a + d: all dimensions' lowest frequency first), map each integer v to the
character chr(CHAR_OFFSET + v - min_coeff) and encode the string with a byte-pair encoding trained on the dataset
(HuggingFace `tokenizers`, vocabulary `vocab_size`, default 1024). Sequences are variable-length; those longer
than `max_tokens` (default 128) are truncated (see `token_lengths`; truncated sequences no longer decode).

Detokenize: concatenate the characters of the ids (BPE decoding), map back to integers; the sequence is valid only
if that gives exactly H * D_a coefficients (and every id is in range), else the chunk is NaN and valid is False.
Then divide by `scale`, inverse DCT, unnormalize.

Quantization error: the DCT is orthonormal, so a chunk's squared error in normalized units equals the sum of its
coefficients' squared rounding errors: at most (0.5 / scale)^2 per element on average over the chunk, about
(1 / scale)^2 / 12 when rounding errors are spread evenly. Values outside the fitted coefficient range are clipped
to it (counted by `clipped_coefficients`).

The `tokenizers` library is imported only when a FAST tokenizer is fitted or loaded
(`pip install "oat_jax[baselines]"`).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from oat_jax.action_tokenizers import metrics
from oat_jax.action_tokenizers.protocol import nan_chunks, pad_sequences
from oat_jax.artifacts import read_type, write_typed_directory
from oat_jax.input_checks import check_action_batch, check_token_batch
from oat_jax.normalizer import Normalizer

CHAR_OFFSET = 0x4E00  # first character of the alphabet (CJK ideographs: no whitespace, no combining characters)
MAX_ALPHABET = 0x9FFF - 0x4E00 + 1  # contiguous characters available from CHAR_OFFSET
BPE_FILE = "bpe.json"  # the trained `tokenizers` BPE (Tokenizer.to_str) inside a saved FAST tokenizer dir


def _tokenizers_lib():
    try:
        import tokenizers  # optional dependency of the FAST baseline only
    except ImportError as e:
        raise ImportError('The FAST tokenizer needs the HuggingFace `tokenizers` library: pip install '
                          '"oat_jax[baselines]" (or pip install tokenizers).') from e
    return tokenizers


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n, n) float64: coeffs = C @ x over time, x = C.T @ coeffs."""
    k = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


class FASTActionTokenizer:
    """DCT + BPE tokenizer; implements `ActionTokenizer` (variable length, `fixed_length` False).

    Args:
      normalizer: raw actions -> [-1, 1] per dimension.
      horizon: H.
      scale: DCT coefficients are multiplied by it before rounding.
      min_coeff, max_coeff: the integer coefficient range of the alphabet (from the training data).
      bpe: a trained `tokenizers.Tokenizer` over characters chr(CHAR_OFFSET + v - min_coeff).
      max_tokens: longest token sequence kept (longer ones are truncated).
    """

    name = "fast"

    def __init__(self, normalizer: Normalizer, horizon: int, scale: float, min_coeff: int, max_coeff: int,
                 bpe, max_tokens: int = 128):
        if not scale > 0 or int(max_tokens) < 1 or int(max_coeff) < int(min_coeff):
            raise ValueError(f"FAST needs scale > 0, max_tokens >= 1 and max_coeff >= min_coeff; got scale={scale}, "
                             f"max_tokens={max_tokens}, coefficient range [{min_coeff}, {max_coeff}].")
        self.normalizer = normalizer
        self._horizon = int(horizon)
        self.scale = float(scale)
        self.min_coeff, self.max_coeff = int(min_coeff), int(max_coeff)
        self.bpe = bpe
        self._max_tokens = int(max_tokens)
        self._dct = dct_matrix(self._horizon)
        # BPE decoding table: id -> the integer coefficients its characters stand for.
        self._pieces: list[np.ndarray] = [np.zeros(0, np.int64)] * bpe.get_vocab_size()
        for piece, idx in bpe.get_vocab().items():
            self._pieces[idx] = np.array([ord(ch) - CHAR_OFFSET + self.min_coeff for ch in piece], np.int64)

    @classmethod
    def fit(cls, chunks: np.ndarray, scale: float = 10.0, vocab_size: int = 1024, max_tokens: int = 128,
            normalizer_mode: str = "limits", min_frequency: int = 2) -> "FASTActionTokenizer":
        """Fits the normalizer, the coefficient alphabet and the BPE merges on raw training chunks (M, H, D_a).

        Args:
          scale: coefficient scale before rounding (FAST's default 10).
          vocab_size: BPE vocabulary (alphabet + merges); must exceed the alphabet size.
          max_tokens: longest sequence `tokenize` returns.
          normalizer_mode: 'limits' (min/max, as OAT and Bin) or 'quantile' (q01/q99 then clip, as FAST).
          min_frequency: a pair must occur this often in the training strings to be merged.
        """
        chunks = np.asarray(chunks, np.float64)
        if chunks.ndim != 3 or chunks.shape[0] == 0:
            raise ValueError(f"FAST fit needs raw training chunks of shape (M, H, D_a), got {chunks.shape}.")
        tk = _tokenizers_lib()
        normalizer = Normalizer.fit(chunks, normalizer_mode)
        coeffs = np.rint(dct_matrix(chunks.shape[1]) @ normalizer.normalize(chunks) * scale).astype(np.int64)
        lo, hi = int(coeffs.min()), int(coeffs.max())
        alphabet = hi - lo + 1
        if alphabet > MAX_ALPHABET:
            raise ValueError(f"FAST coefficients span {alphabet} integers at scale {scale}; at most {MAX_ALPHABET} "
                             f"fit the alphabet. Lower the scale.")
        if alphabet >= vocab_size:
            raise ValueError(f"FAST vocab_size={vocab_size} must exceed the alphabet of {alphabet} coefficient values "
                             f"(range [{lo}, {hi}] at scale {scale}); raise vocab_size or lower the scale.")
        bpe = tk.Tokenizer(tk.models.BPE())
        trainer = tk.trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                         show_progress=False, special_tokens=[],
                                         initial_alphabet=[chr(CHAR_OFFSET + i) for i in range(alphabet)])
        strings = [_to_string(c, lo) for c in _flatten(coeffs)]
        bpe.train_from_iterator(strings, trainer=trainer, length=len(strings))
        return cls(normalizer, chunks.shape[1], scale, lo, hi, bpe, max_tokens)

    # ----- sizes -----
    @property
    def vocab_size(self) -> int:
        """Size of the trained BPE vocabulary (alphabet + merges; may be below the requested size)."""
        return self.bpe.get_vocab_size()

    @property
    def max_tokens(self) -> int:
        """Longest token sequence (longer encodings are truncated)."""
        return self._max_tokens

    @property
    def fixed_length(self) -> bool:
        """False: sequences are variable-length."""
        return False

    @property
    def horizon(self) -> int:
        """H."""
        return self._horizon

    @property
    def action_dim(self) -> int:
        """D_a."""
        return self.normalizer.action_dim

    @property
    def num_coefficients(self) -> int:
        """H * D_a: coefficients a valid sequence decodes to."""
        return self.horizon * self.action_dim

    @property
    def quantization_mse_bound(self) -> float:
        """(0.5 / scale)^2: the largest mean squared error (normalized units) rounding can cause in one chunk."""
        return (0.5 / self.scale) ** 2

    # ----- coefficients -----
    def coefficients(self, actions: np.ndarray) -> np.ndarray:
        """Raw actions (B, H, D_a) -> rounded scaled DCT coefficients (B, H, D_a) int64 (before clipping)."""
        x = self.normalizer.normalize(check_action_batch(actions, self.horizon, self.action_dim)).astype(np.float64)
        return np.rint(self._dct @ x * self.scale).astype(np.int64)

    def clipped_coefficients(self, actions: np.ndarray) -> np.ndarray:
        """(B,) int: how many coefficients of each chunk fall outside the fitted alphabet (and get clipped)."""
        c = self.coefficients(actions)
        return np.sum((c < self.min_coeff) | (c > self.max_coeff), axis=(1, 2))

    def _encode(self, actions: np.ndarray) -> list[list[int]]:
        coeffs = np.clip(self.coefficients(actions), self.min_coeff, self.max_coeff)
        encodings = self.bpe.encode_batch([_to_string(c, self.min_coeff) for c in _flatten(coeffs)])
        return [e.ids for e in encodings]

    def token_lengths(self, actions: np.ndarray) -> np.ndarray:
        """(B,) int32: BPE sequence length of each chunk before truncation to max_tokens."""
        return np.array([len(ids) for ids in self._encode(actions)], np.int32)

    # ----- tokenize / detokenize -----
    def tokenize(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw actions (B, H, D_a) -> tokens (B, max_tokens) int32 PAD-padded, lengths (B,) int32.

        Sequences longer than max_tokens are cut (logged; count them with `token_lengths`)."""
        sequences = self._encode(actions)
        too_long = sum(len(s) > self.max_tokens for s in sequences)
        if too_long:
            logging.warning("FAST: %d of %d chunks need more than max_tokens=%d tokens and were truncated (they will "
                            "not decode).", too_long, len(sequences), self.max_tokens)
        return pad_sequences([s[:self.max_tokens] for s in sequences], self.max_tokens)

    def detokenize(self, tokens: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """tokens (B, W <= max_tokens) int (+ lengths (B,), default: non-PAD count) -> raw actions (B, H, D_a)
        float32, valid (B,) bool: False (and NaN actions) unless the ids decode to exactly H * D_a coefficients."""
        t, lens = check_token_batch(tokens, lengths, self.max_tokens)
        batch, n = t.shape[0], self.num_coefficients
        coeffs = np.zeros((batch, n), np.float64)
        valid = np.zeros((batch,), bool)
        vocab = len(self._pieces)
        for b in range(batch):
            ids = t[b, :lens[b]]
            if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab:
                continue
            values = np.concatenate([self._pieces[i] for i in ids])
            if values.size == n:
                coeffs[b], valid[b] = values, True
        freq = coeffs.reshape(batch, self.horizon, self.action_dim) / self.scale
        normalized = np.einsum("kt,bkd->btd", self._dct, freq).astype(np.float32)
        actions = np.where(valid[:, None, None], self.normalizer.unnormalize(normalized),
                           nan_chunks(batch, self.horizon, self.action_dim))
        return actions.astype(np.float32), valid

    # ----- report convention (see protocol.py) -----
    def report_prefix_lengths(self) -> list[int]:
        """Token counts of the tokenizer report's rate-distortion curve: none (FAST prefixes do not decode)."""
        return []

    def diagnostics(self, chunks: np.ndarray, reconstruction: np.ndarray, valid: np.ndarray) -> dict:
        """The FAST section of the tokenizer report: the round-trip error against the quantization bound.

        Args:
          chunks: (B, H, D_a) raw actions; reconstruction: (B, H, D_a) float32 their round trip (NaN where
            invalid); valid: (B,) bool.
        Returns:
          {"fast_quantization": {"scale", "mse_bound_per_chunk": (0.5 / scale)^2, "mse_uniform_rounding":
           (1 / scale)^2 / 12, "max_chunk_mse_norm_own" / "mean_mse_norm_own": per-chunk MSE in this tokenizer's
           normalized units over the clean chunks (no clipped coefficient, not truncated; None if there are none),
           "chunks_clean", "chunks_with_clipped_coefficients", "chunks_truncated", "clean_chunks_decoded": fraction
           of the clean chunks that are valid}}.
        """
        clipped, lengths = self.clipped_coefficients(chunks), self.token_lengths(chunks)
        clean = (clipped == 0) & (lengths <= self.max_tokens)
        own = metrics.per_chunk_mse(self.normalizer.normalize(np.asarray(reconstruction)),
                                    self.normalizer.normalize(np.asarray(chunks)))
        any_clean = bool(clean.any())
        return {"fast_quantization": {
            "scale": self.scale, "mse_bound_per_chunk": self.quantization_mse_bound,
            "mse_uniform_rounding": (1.0 / self.scale) ** 2 / 12,
            "max_chunk_mse_norm_own": float(np.max(own[clean])) if any_clean else None,
            "mean_mse_norm_own": float(np.mean(own[clean])) if any_clean else None,
            "chunks_clean": int(clean.sum()), "chunks_with_clipped_coefficients": int(np.sum(clipped > 0)),
            "chunks_truncated": int(np.sum(lengths > self.max_tokens)),
            "clean_chunks_decoded": float(np.asarray(valid)[clean].mean()) if any_clean else None}}

    # ----- persistence -----
    def to_dict(self) -> dict:
        """JSON-able description (action_tokenizer.json); the BPE itself is in BPE_FILE."""
        return {"type": self.name, "horizon": self.horizon, "scale": self.scale, "min_coeff": self.min_coeff,
                "max_coeff": self.max_coeff, "max_tokens": self.max_tokens, "bpe_file": BPE_FILE,
                "normalizer": self.normalizer.to_dict()}

    def save(self, path: str) -> str:
        """Writes `path/action_tokenizer.json` and `path/bpe.json`; returns the absolute directory path."""
        return write_typed_directory(path, self.to_dict(), files={BPE_FILE: self.bpe.to_str()})

    @classmethod
    def load(cls, path: str) -> "FASTActionTokenizer":
        """Reads a directory written by `save`."""
        d = read_type(path, cls.name)
        with open(os.path.join(path, d["bpe_file"])) as f:
            bpe = _tokenizers_lib().Tokenizer.from_str(f.read())
        return cls(Normalizer.from_dict(d["normalizer"]), d["horizon"], d["scale"], d["min_coeff"],
                   d["max_coeff"], bpe, d["max_tokens"])

    def __repr__(self) -> str:
        return (f"FASTActionTokenizer(H={self.horizon}, D_a={self.action_dim}, scale={self.scale}, "
                f"vocab_size={self.vocab_size}, max_tokens={self.max_tokens})")


def _flatten(coeffs: np.ndarray) -> np.ndarray:
    """(B, H, D_a) coefficients -> (B, H*D_a), frequency-major (index f * D_a + d)."""
    return coeffs.reshape(coeffs.shape[0], -1)


def _to_string(values: np.ndarray, min_coeff: int) -> str:
    """1-D integer coefficients -> the BPE input string (one character per coefficient)."""
    return "".join(map(chr, (np.asarray(values) - min_coeff + CHAR_OFFSET).tolist()))
