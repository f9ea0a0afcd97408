"""`OATTokenizer`: config, params and normalizer of an ordered action tokenizer, behind the `ActionTokenizer`
interface that Bin and FAST implement too.

Two layers:
- pure functions (`tokenize_fn`, `detokenize_fn`, `encode_fn`, `decode_fn`, `autoencode_fn`) that take params
  explicitly, work in raw action units and trace inside a user's `jax.jit` / `vmap` / `shard_map`. They accept
  batched or unbatched inputs and token prefixes of any width k <= N; an example whose prefix length is outside
  1..k or whose kept ids are outside [0, vocab_size) decodes to NaN (they cannot raise inside jit);
- the validated host API of every action tokenizer: `tokenize(actions) -> (tokens, lengths)` and
  `detokenize(tokens, lengths) -> (actions, valid)` with the conventions of `oat_jax.action_tokenizers.protocol`
  (batched numpy arrays, PAD-padded tokens, lengths 0..W, invalid examples flagged and NaN), plus OAT's own
  `encode` / `decode` / `autoencode`. Calls run in blocks padded to a power of two, and every prefix length shares
  one compiled function (prefixes are applied with a mask computed from `lengths`).
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from oat_jax import artifacts, fsq, input_checks
from oat_jax.config import OATConfig
from oat_jax.model import OATModel, check_params, init_params
from oat_jax.normalizer import Normalizer

Lengths = Any  # None, an int, or a (B,) integer array


def _batched(x: jax.Array, rank: int) -> tuple[jax.Array, bool]:
    """(x with a leading batch axis, whether it was added): inputs of rank `rank` - 1 are single examples."""
    x = jnp.asarray(x)
    return (x[None], True) if x.ndim == rank - 1 else (x, False)


def _prefix(x: jax.Array, lengths: Lengths, num_tokens: int, what: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A (B, k, ...) prefix -> (the prefix zero-padded to N along axis 1, lengths (B,) clipped to 1..k, valid (B,)
    bool: the given length was in 1..k)."""
    batch, k = x.shape[0], x.shape[1]
    if not 1 <= k <= num_tokens:
        raise ValueError(f"{what} hold {k} positions per example; pass between 1 and N = {num_tokens}.")
    lens = jnp.broadcast_to(jnp.asarray(k if lengths is None else lengths, jnp.int32), (batch,))
    valid = (lens >= 1) & (lens <= k)
    pad = [(0, 0), (0, num_tokens - k)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad), jnp.clip(lens, 1, k), valid


class TokenizerFunctions:
    """Pure functions for one (config, normalizer), in raw action units, with params passed explicitly.

    They do no host-side checks and can be used inside a user's `jax.jit`. `jitted[name]` holds a jitted copy of
    each; these are shared by every OATTokenizer with an equal config and normalizer (see `functions_for`), so
    loading the same tokenizer twice does not compile twice. `trace_counts[name]` counts the traces of each.
    """

    NAMES = ("tokenize", "detokenize", "encode", "encode_latents", "decode", "autoencode")

    def __init__(self, config: OATConfig, normalizer: Normalizer):
        self.config = config
        self.normalizer = normalizer
        self.model = OATModel(config)
        self.trace_counts: collections.Counter = collections.Counter()
        self.jitted = {name: self._jit(name, getattr(self, name)) for name in self.NAMES}

    def _jit(self, name: str, fn: Callable) -> Callable:
        def traced(*args):
            self.trace_counts[name] += 1  # runs only while tracing
            return fn(*args)
        return jax.jit(traced)

    def _apply(self, params, *args, method):
        return self.model.apply({"params": params}, *args, method=method)

    def encode_latents(self, params, actions: jax.Array) -> jax.Array:
        """Raw actions (B, H, D_a) or (H, D_a) -> pre-quantization latents (B, N, d) or (N, d) float32."""
        x, single = _batched(actions, 3)
        out = self._apply(params, self.normalizer.normalize(x), method=OATModel.encode)
        return out[0] if single else out

    def encode(self, params, actions: jax.Array) -> jax.Array:
        """Raw actions (B, H, D_a) or (H, D_a) -> FSQ codes (B, N, d) or (N, d) float32 on the grid in [-1, 1]."""
        return fsq.quantize(self.encode_latents(params, actions), self.config.levels)

    def tokenize(self, params, actions: jax.Array) -> jax.Array:
        """Raw actions (B, H, D_a) or (H, D_a) -> token ids (B, N) or (N,) int32."""
        x, single = _batched(actions, 3)
        out = self._apply(params, self.normalizer.normalize(x), method=OATModel.tokenize)
        return out[0] if single else out

    def decode(self, params, codes: jax.Array, lengths: Lengths = None) -> jax.Array:
        """Codes (B, k, d) or (k, d), k <= N, + prefix lengths (None = k, an int or (B,) int in 1..k) -> raw actions
        (B, H, D_a) or (H, D_a) float32; NaN for an example whose length is out of range."""
        c, single = _batched(codes, 3)
        c, lens, valid = _prefix(c, lengths, self.config.num_tokens, "codes")
        out = self.normalizer.unnormalize(self._apply(params, c, lens, method=OATModel.decode))
        out = jnp.where(valid[:, None, None], out, jnp.nan)
        return out[0] if single else out

    def detokenize(self, params, tokens: jax.Array, lengths: Lengths = None) -> jax.Array:
        """Token ids (B, k) or (k,), k <= N, + prefix lengths (None = k, an int or (B,) int in 1..k) -> raw actions
        (B, H, D_a) or (H, D_a) float32, decoded from the first `lengths` tokens of each example (ids after it are
        ignored). NaN for an example whose length is outside 1..k or whose kept ids are outside [0, vocab_size)."""
        t, single = _batched(tokens, 2)
        t, lens, valid = _prefix(t.astype(jnp.int32), lengths, self.config.num_tokens, "tokens")
        kept = jnp.arange(self.config.num_tokens)[None, :] < lens[:, None]
        in_range = (t >= 0) & (t < self.config.vocab_size)
        valid &= jnp.all(in_range | ~kept, axis=1)
        safe = jnp.where(kept & in_range, t, 0)
        out = self.normalizer.unnormalize(self._apply(params, safe, lens, method=OATModel.detokenize))
        out = jnp.where(valid[:, None, None], out, jnp.nan)
        return out[0] if single else out

    def autoencode(self, params, actions: jax.Array, lengths: Lengths = None) -> jax.Array:
        """Raw actions (B, H, D_a) or (H, D_a) -> reconstruction of the same shape from the first `lengths` tokens."""
        return self.detokenize(params, self.tokenize(params, actions), lengths)


@functools.lru_cache(maxsize=16)
def _cached_functions(config: OATConfig, mode: str, scale: bytes, offset: bytes) -> TokenizerFunctions:
    normalizer = Normalizer(mode, np.frombuffer(scale, np.float32), np.frombuffer(offset, np.float32))
    return TokenizerFunctions(config, normalizer)


def functions_for(config: OATConfig, normalizer: Normalizer) -> TokenizerFunctions:
    """The shared TokenizerFunctions for this config and normalizer (keyed by config, mode, scale and offset)."""
    return _cached_functions(config, normalizer.mode, normalizer.scale.tobytes(), normalizer.offset.tobytes())


def _block_rows(batch: int, block_size: int) -> int:
    """Rows per jitted call: the next power of two >= batch, at most block_size."""
    return min(block_size, 1 << max(batch - 1, 0).bit_length())


class OATTokenizer:
    """Ordered action tokenizer: raw action chunks (B, H, D_a) <-> int32 token ids (B, N) in [0, vocab_size).

    Implements `oat_jax.action_tokenizers.ActionTokenizer` (name "oat"; OAT, OAT x and QueST-style are all
    OATConfigs). A prefix of k tokens decodes to the chunk OAT_k; for tokenizers trained without nested dropout
    (OAT x, QueST-style) prefixes decode mechanically but are not meaningful reconstructions.

    Args:
      config: the architecture.
      params: the model's "params" collection ({"encoder": ..., "decoder": ...}); a variables dict
        {"params": {...}} is unwrapped.
      normalizer: maps raw actions to the normalized units the model was trained on; None = identity (or, with
        `dataset_normalizers`, the first dataset's).
      dataset_normalizers: {dataset label: normalizer} of a tokenizer trained on a mixture, each member normalized
        with its own statistics; `for_dataset(label)` gives the tokenizer in that dataset's units.
      block_size: most rows per jitted call of the host API.
    """

    name = "oat"

    def __init__(self, config: OATConfig, params, normalizer: Normalizer | None = None,
                 dataset_normalizers: Mapping[str, Normalizer] | None = None, block_size: int = 512):
        if isinstance(params, dict) and set(params) == {"params"}:
            params = params["params"]
        check_params(config, params)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}.")
        dataset_normalizers = dict(dataset_normalizers or {})
        if normalizer is None:
            normalizer = (next(iter(dataset_normalizers.values())) if dataset_normalizers
                          else Normalizer.identity(config.action_dim))
        for label, n in [("", normalizer), *dataset_normalizers.items()]:
            if n.action_dim != config.action_dim:
                raise ValueError(f"The normalizer{f' of dataset {label!r}' if label else ''} has {n.action_dim} "
                                 f"action dims but config.action_dim is {config.action_dim}; fit the normalizer on "
                                 f"this dataset's actions.")
        self.config = config
        self.params = params
        self.normalizer = normalizer
        self.dataset_normalizers = dataset_normalizers
        self.block_size = int(block_size)
        self.model = OATModel(config)
        self._fns = functions_for(config, normalizer)
        # Pure functions (params explicit, raw units, no host checks, jit/vmap-able); see TokenizerFunctions.
        self.tokenize_fn = self._fns.tokenize
        self.detokenize_fn = self._fns.detokenize
        self.encode_fn = self._fns.encode
        self.encode_latents_fn = self._fns.encode_latents
        self.decode_fn = self._fns.decode
        self.autoencode_fn = self._fns.autoencode

    @classmethod
    def init(cls, config: OATConfig, rng: jax.Array, normalizer: Normalizer | None = None) -> "OATTokenizer":
        """An untrained tokenizer with freshly initialised params (rng: a jax PRNG key)."""
        return cls(config, init_params(config, rng), normalizer)

    # ----- sizes -----
    @property
    def vocab_size(self) -> int:
        """Number of token ids (prod of the FSQ levels)."""
        return self.config.vocab_size

    @property
    def num_tokens(self) -> int:
        """N: tokens per action chunk."""
        return self.config.num_tokens

    @property
    def max_tokens(self) -> int:
        """N (the `ActionTokenizer` name: the width of `tokens`)."""
        return self.config.num_tokens

    @property
    def fixed_length(self) -> bool:
        """True: every chunk has N tokens (shorter lengths decode prefixes)."""
        return True

    @property
    def horizon(self) -> int:
        """H: action steps per chunk."""
        return self.config.horizon

    @property
    def action_dim(self) -> int:
        """D_a: size of one action."""
        return self.config.action_dim

    @property
    def datasets(self) -> list[str]:
        """Labels of the datasets this tokenizer has normalizers for ([] unless trained on a mixture)."""
        return list(self.dataset_normalizers)

    def for_dataset(self, label: str) -> "OATTokenizer":
        """This tokenizer (same params) reading and writing raw actions in the units of mixture member `label`.

        Raises KeyError naming the known labels."""
        if label not in self.dataset_normalizers:
            known = self.datasets or "none: it was not trained on a mixture"
            raise KeyError(f"No normalizer for dataset {label!r}; this tokenizer has {known}.")
        return OATTokenizer(self.config, self.params, self.dataset_normalizers[label], self.dataset_normalizers,
                            self.block_size)

    @property
    def trace_counts(self) -> dict[str, int]:
        """How often each jitted function was traced (a new block size traces again). The jitted functions are
        shared by tokenizers with an equal config and normalizer, and so are these counts."""
        return dict(self._fns.trace_counts)

    # ----- validated host API (ActionTokenizer) -----
    def _run(self, name: str, *arrays: np.ndarray) -> np.ndarray:
        """jitted[name](params, *arrays) over row blocks padded to a power of two; arrays share axis 0."""
        batch = arrays[0].shape[0]
        rows = _block_rows(batch, self.block_size)
        outs = []
        for start in range(0, max(batch, 1), rows):
            stop = min(start + rows, batch)
            block = [np.concatenate([a[start:stop], np.repeat(a[:1], rows - (stop - start), 0)]) if batch else
                     np.zeros((rows,) + a.shape[1:], a.dtype) for a in arrays]
            outs.append(np.asarray(self._fns.jitted[name](self.params, *block))[:stop - start])
        return np.concatenate(outs)

    def tokenize(self, actions) -> tuple[np.ndarray, np.ndarray]:
        """Raw actions (B, H, D_a), any real dtype -> tokens (B, N) int32, lengths (B,) int32 (all N).

        Raises ValueError for a wrong shape or dtype or non-finite values."""
        x = input_checks.check_action_batch(actions, self.horizon, self.action_dim)
        tokens = self._run("tokenize", x).astype(np.int32)
        return tokens, np.full((x.shape[0],), self.num_tokens, np.int32)

    def detokenize(self, tokens, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        """Tokens -> raw action chunks.

        Args:
          tokens: (B, W) integer ids, W <= N (a prefix of W tokens per example); PAD_ID (-1) entries are padding.
          lengths: None (the non-PAD count of each row), an int or (B,) ints in [0, W]: decode the first `lengths`
            tokens of each example (OAT_k); ids after it are ignored.
        Returns:
          actions (B, H, D_a) float32 raw units, valid (B,) bool: False (and a NaN chunk) for length 0 or a kept id
          outside [0, vocab_size).
        Raises:
          ValueError for a wrong rank, dtype or width, or lengths outside [0, W].
        """
        t, lens = input_checks.check_token_batch(tokens, lengths, self.num_tokens)
        valid = lens > 0
        actions = self._run("detokenize", t.astype(np.int32), np.maximum(lens, 1).astype(np.int32))
        actions = actions.astype(np.float32)
        valid &= np.all(np.isfinite(actions), axis=(1, 2))
        actions[~valid] = np.nan
        return actions, valid

    def encode(self, actions, quantize: bool = True) -> np.ndarray:
        """Raw actions (B, H, D_a) -> FSQ codes (quantize=True) or raw latents, float32 (B, N, d)."""
        x = input_checks.check_action_batch(actions, self.horizon, self.action_dim)
        return self._run("encode" if quantize else "encode_latents", x)

    def decode(self, codes, lengths: Lengths = None) -> np.ndarray:
        """Codes (B, N, d) float (+ prefix lengths None = N, an int or (B,) in 1..N) -> raw actions (B, H, D_a)."""
        c = np.asarray(codes)
        shape = (self.num_tokens, self.config.latent_dim)
        if not np.issubdtype(c.dtype, np.floating) or c.ndim != 3 or c.shape[1:] != shape:
            raise ValueError(f"codes must be a float array of shape (B, {shape[0]}, {shape[1]}), got {c.shape} "
                             f"{c.dtype}; add a batch axis for a single chunk.")
        if not np.all(np.isfinite(c)):
            raise ValueError("codes contain NaN or Inf values.")
        lens = input_checks.check_lengths(lengths, c.shape[0], self.num_tokens, self.num_tokens)
        return self._run("decode", c.astype(np.float32), lens)

    def autoencode(self, actions, k: Lengths = None) -> np.ndarray:
        """Tokenize then decode the first k tokens (None = N; an int or (B,) in 1..N): (B, H, D_a) raw units."""
        x = input_checks.check_action_batch(actions, self.horizon, self.action_dim)
        lens = input_checks.check_lengths(k, x.shape[0], self.num_tokens, self.num_tokens)
        return self._run("autoencode", x, lens)

    def device_tokenizer(self) -> tuple[Callable, Any]:
        """(fn, params) with `fn(params, actions)` tokenizing raw actions (B, H, D_a) float32 -> tokens (B, N) int32,
        lengths (B,) int32 in pure jax (jit-traceable, no host checks): the targets a policy's train step makes on
        the device from streamed chunks."""
        fns, n = self._fns, self.num_tokens

        def tokenize(params, actions):
            tokens = fns.tokenize(params, actions).astype(jnp.int32)
            return tokens, jnp.full(tokens.shape[:1], n, jnp.int32)

        return tokenize, self.params

    # ----- persistence -----
    def save(self, path: str, overwrite: bool = False) -> str:
        """Writes the tokenizer directory (`oat_jax.artifacts`: config.json, normalizer.json, params/,
        action_tokenizer.json, ...) at `path`; returns its absolute path. `overwrite` replaces a saved tokenizer."""
        return artifacts.write_tokenizer(path, self.config, self.params, self.normalizer,
                                         self.dataset_normalizers or None, overwrite=overwrite)

    @classmethod
    def load(cls, path: str, step=None, verify: bool = True, dataset: str | None = None,
             sharding=None) -> "OATTokenizer":
        """Loads an OAT tokenizer from a tokenizer directory, a checkpoint step directory or a training workdir.

        Args:
          path: local path or URL (gs://...) of any of those.
          step: for a workdir: None = `<workdir>/tokenizer` if present, else the latest checkpoint; 'latest',
            'best' (lowest validation MSE) or a step number = the EMA params of that checkpoint.
          verify: check the files against the hashes recorded at save time (False skips it for huge artifacts).
          dataset: for a tokenizer trained on a mixture, the member whose normalizer to use (see `for_dataset`).
          sharding: where the params go: None = the first local device; one jax.sharding.Sharding for every leaf;
            or a pytree of Shardings shaped like the params.
        Raises:
          FileNotFoundError: nothing loadable there (or the step is not kept); ValueError: a damaged or edited file
          (named in the message), a config that does not match its params, or a bad `step`.
        """
        parts = artifacts.read_tokenizer(path, step, sharding=sharding, verify=verify)
        tok = cls(parts.config, parts.params, parts.normalizer, parts.dataset_normalizers)
        return tok if dataset is None else tok.for_dataset(dataset)

    # ----- report hooks (see oat_jax.action_tokenizers.protocol) -----
    def report_prefix_lengths(self) -> list[int]:
        """Token counts at which a rate-distortion curve is measured: every prefix 1..N."""
        return list(range(1, self.num_tokens + 1))

    def diagnostics(self, chunks: np.ndarray, reconstruction: np.ndarray, valid: np.ndarray) -> dict:
        """The tokenizer-specific section of a report: {"config": the OATConfig as a dict}."""
        del chunks, reconstruction, valid
        return {"config": self.config.to_dict()}

    def __repr__(self) -> str:
        c = self.config
        return (f"OATTokenizer(H={c.horizon}, D_a={c.action_dim}, N={c.num_tokens}, vocab_size={c.vocab_size}, "
                f"encoder={c.encoder!r}, normalizer={self.normalizer.mode!r})")
