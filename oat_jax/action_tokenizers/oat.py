"""`OATActionTokenizer`: an `OATTokenizer` (OAT, OAT x or QueST-style: any `OATConfig`) behind `ActionTokenizer`.

tokenize gives N tokens per chunk (lengths = N). detokenize decodes the prefix of each example's length (1..N:
OAT_k; positions >= length are replaced by the decoder's mask vector, their ids are ignored). Length 0 and ids
outside [0, vocab_size) in the prefix make an example invalid (NaN chunk); every other sequence decodes (total).
For OAT x and QueST-style tokenizers (trained without nested dropout) prefixes decode mechanically but are not
meaningful reconstructions.

Calls are split into blocks padded to a power of two (at most `block_size` rows), so arbitrary batch sizes
compile a handful of programs only.
"""

from __future__ import annotations

import numpy as np

from oat_jax.action_tokenizers.protocol import (check_actions, check_token_batch, nan_chunks, read_tokenizer_json,
                                                write_tokenizer_json)
from oat_jax.pretrained import load_pretrained
from oat_jax.tokenizer import OATTokenizer


def _block_rows(batch: int, block_size: int) -> int:
    """Rows per jitted call: the next power of two >= batch, at most block_size."""
    return min(block_size, 1 << max(batch - 1, 0).bit_length())


class OATActionTokenizer:
    """Adapter of a trained `OATTokenizer`; implements `ActionTokenizer`.

    Args:
      tokenizer: the OATTokenizer (config, params, normalizer).
      block_size: most rows per jitted tokenize/detokenize call.
    """

    name = "oat"

    def __init__(self, tokenizer: OATTokenizer, block_size: int = 512):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}.")
        self.tokenizer = tokenizer
        self.block_size = int(block_size)

    @property
    def config(self):
        """The wrapped tokenizer's OATConfig."""
        return self.tokenizer.config

    @property
    def vocab_size(self) -> int:
        """prod(FSQ levels)."""
        return self.tokenizer.vocab_size

    @property
    def max_tokens(self) -> int:
        """N."""
        return self.tokenizer.num_tokens

    @property
    def fixed_length(self) -> bool:
        """True: N tokens per chunk (shorter lengths decode prefixes)."""
        return True

    @property
    def horizon(self) -> int:
        """H."""
        return self.tokenizer.horizon

    @property
    def action_dim(self) -> int:
        """D_a."""
        return self.tokenizer.action_dim

    def _blocks(self, batch: int):
        rows = _block_rows(batch, self.block_size)
        for start in range(0, batch, rows):
            yield start, min(start + rows, batch), rows

    def tokenize(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw actions (B, H, D_a) -> tokens (B, N) int32, lengths (B,) int32 (all N)."""
        x = check_actions(actions, self.horizon, self.action_dim)
        out = np.zeros((x.shape[0], self.max_tokens), np.int32)
        for start, stop, rows in self._blocks(x.shape[0]):
            block = np.zeros((rows,) + x.shape[1:], np.float32)
            block[:stop - start] = x[start:stop]
            out[start:stop] = np.asarray(self.tokenizer.tokenize(block))[:stop - start]
        return out, np.full((x.shape[0],), self.max_tokens, np.int32)

    def detokenize(self, tokens: np.ndarray, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """tokens (B, W <= N) int (+ lengths (B,) in [0, W], default: non-PAD count) -> raw actions (B, H, D_a)
        float32 from the first `lengths` tokens, valid (B,) bool (False: length 0, an id out of range, or a
        non-finite output; those chunks are NaN)."""
        t, lens = check_token_batch(tokens, lengths, self.max_tokens)
        batch = t.shape[0]
        kept = np.arange(self.max_tokens)[None, :] < lens[:, None]
        in_range = (t >= 0) & (t < self.vocab_size)
        valid = (lens > 0) & np.all(in_range | ~kept, axis=1)
        safe_tokens = np.where(kept & in_range, t, 0).astype(np.int32)
        safe_lengths = np.clip(lens, 1, self.max_tokens).astype(np.int32)
        actions = nan_chunks(batch, self.horizon, self.action_dim)
        for start, stop, rows in self._blocks(batch):
            block_t = np.zeros((rows, self.max_tokens), np.int32)
            block_l = np.ones((rows,), np.int32)
            block_t[:stop - start], block_l[:stop - start] = safe_tokens[start:stop], safe_lengths[start:stop]
            actions[start:stop] = np.asarray(self.tokenizer.detokenize(block_t, block_l))[:stop - start]
        valid &= np.all(np.isfinite(actions), axis=(1, 2))
        actions[~valid] = np.nan
        return actions, valid

    # ----- report convention (see protocol.py) -----
    def report_prefix_lengths(self) -> list[int]:
        """Token counts at which the tokenizer report measures the rate-distortion curve: every prefix 1..N."""
        return list(range(1, self.max_tokens + 1))

    def diagnostics(self, chunks: np.ndarray, reconstruction: np.ndarray, valid: np.ndarray) -> dict:
        """The OAT section of the tokenizer report: {"config": the OATConfig as a dict}. The arrays (raw chunks
        (B, H, D_a), their full-length reconstruction (B, H, D_a) float32 and valid (B,) bool) are not needed."""
        del chunks, reconstruction, valid
        return {"config": self.config.to_dict()}

    def save(self, path: str) -> str:
        """Writes the OATTokenizer directory (config.json, normalizer.json, params/) plus action_tokenizer.json;
        returns the absolute path. `path` must not exist or be empty (FileExistsError otherwise)."""
        path = self.tokenizer.save(path)
        return write_tokenizer_json(path, {"type": self.name, "config": self.config.to_dict()})

    @classmethod
    def load(cls, path: str, step=None) -> "OATActionTokenizer":
        """An OAT tokenizer directory, or a training workdir (`tokenizer/`, else a checkpoint; `step` as in
        `oat_jax.load_pretrained`). FileNotFoundError when nothing loadable is there."""
        description = read_tokenizer_json(path)
        if description is not None and description.get("type") != cls.name:
            raise ValueError(f"{path} holds a {description.get('type')!r} tokenizer, not an OAT one; load it with "
                             f"oat_jax.action_tokenizers.load_action_tokenizer.")
        return cls(load_pretrained(path, step=step).tokenizer)

    def __repr__(self) -> str:
        c = self.config
        return (f"OATActionTokenizer(H={c.horizon}, D_a={c.action_dim}, N={c.num_tokens}, "
                f"vocab_size={c.vocab_size}, encoder={c.encoder!r}, nested_dropout={c.nested_dropout!r})")
