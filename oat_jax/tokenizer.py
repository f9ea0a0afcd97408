"""`OATTokenizer`: the public entry point bundling config, params and the action normalizer.

Two layers:
- pure functions (`tokenize_fn`, `detokenize_fn`, `encode_fn`, `decode_fn`, `autoencode_fn`) that take params
  explicitly, work in raw action units, do no input checks and can be used inside a user's `jax.jit`;
- the Python API (`tokenize`, `detokenize`, `encode`, `decode`, `autoencode`) that validates inputs on the host,
  accepts unbatched inputs, pads token prefixes to N and calls jitted versions of the pure functions. Every prefix
  length shares one compiled function (prefixes are applied with a mask computed from `lengths`).
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from oat_jax import checkpoint, fsq, input_checks
from oat_jax.config import OATConfig
from oat_jax.model import OATModel, check_params, init_params
from oat_jax.normalizer import ActionNormalizer

Lengths = Any  # None, an int, or a (B,) integer array


class TokenizerFunctions:
    """Pure functions for one (config, normalizer), in raw action units, with params passed explicitly.

    They do no input checks and can be used inside a user's `jax.jit`. `jitted[name]` holds a jitted copy of each;
    these are shared by every OATTokenizer with an equal config and normalizer (see `functions_for`), so loading the
    same tokenizer twice does not compile twice. `trace_counts[name]` counts how often each jitted copy was traced.
    """

    NAMES = ("tokenize", "detokenize", "encode", "encode_latents", "decode", "autoencode")

    def __init__(self, config: OATConfig, normalizer: ActionNormalizer):
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
        """Raw actions (B, H, D_a) -> pre-quantization latents (B, N, d) float32."""
        return self._apply(params, self.normalizer.normalize(jnp.asarray(actions)), method=OATModel.encode)

    def encode(self, params, actions: jax.Array) -> jax.Array:
        """Raw actions (B, H, D_a) -> FSQ codes (B, N, d) float32 on the grid in [-1, 1]."""
        return fsq.quantize(self.encode_latents(params, actions), self.config.levels)

    def tokenize(self, params, actions: jax.Array) -> jax.Array:
        """Raw actions (B, H, D_a) -> token ids (B, N) int32."""
        return self._apply(params, self.normalizer.normalize(jnp.asarray(actions)), method=OATModel.tokenize)

    def decode(self, params, codes: jax.Array, lengths: Lengths = None) -> jax.Array:
        """Codes (B, N, d) + prefix lengths (None = N, int, or (B,) int in 1..N) -> raw actions (B, H, D_a) f32."""
        return self.normalizer.unnormalize(self._apply(params, codes, lengths, method=OATModel.decode))

    def detokenize(self, params, tokens: jax.Array, lengths: Lengths = None) -> jax.Array:
        """Token ids (B, N) + prefix lengths (None = N, int, or (B,) int in 1..N) -> raw actions (B, H, D_a) f32.

        Ids at positions >= length are ignored (replaced by the mask vector); any integer id decodes (total).
        """
        return self.normalizer.unnormalize(self._apply(params, tokens, lengths, method=OATModel.detokenize))

    def autoencode(self, params, actions: jax.Array, lengths: Lengths = None) -> jax.Array:
        """Raw actions (B, H, D_a) -> reconstruction (B, H, D_a) raw units from the first `lengths` tokens."""
        return self.detokenize(params, self.tokenize(params, actions), lengths)


@functools.lru_cache(maxsize=16)
def _cached_functions(config: OATConfig, mode: str, scale: bytes, offset: bytes) -> TokenizerFunctions:
    normalizer = ActionNormalizer(mode, np.frombuffer(scale, np.float32), np.frombuffer(offset, np.float32))
    return TokenizerFunctions(config, normalizer)


def functions_for(config: OATConfig, normalizer: ActionNormalizer) -> TokenizerFunctions:
    """The shared TokenizerFunctions for this config and normalizer (keyed by config, mode, scale and offset)."""
    return _cached_functions(config, normalizer.mode, normalizer.scale.tobytes(), normalizer.offset.tobytes())


class OATTokenizer:
    """Ordered action tokenizer: raw action chunks (B, H, D_a) <-> int32 token ids (B, N) in [0, vocab_size).

    Args:
      config: the architecture.
      params: the model's "params" collection ({"encoder": ..., "decoder": ...}); a variables dict
        {"params": {...}} is unwrapped.
      normalizer: maps raw actions to the normalized units the model was trained on; None = identity (or, with
        `dataset_normalizers`, the first dataset's).
      dataset_normalizers: {dataset label: normalizer} of a tokenizer trained on a mixture, each member normalized
        with its own statistics; `for_dataset(label)` gives the tokenizer in that dataset's units.
    """

    def __init__(self, config: OATConfig, params, normalizer: ActionNormalizer | None = None,
                 dataset_normalizers: Mapping[str, ActionNormalizer] | None = None):
        if isinstance(params, dict) and set(params) == {"params"}:
            params = params["params"]
        check_params(config, params)
        dataset_normalizers = dict(dataset_normalizers or {})
        if normalizer is None:
            normalizer = (next(iter(dataset_normalizers.values())) if dataset_normalizers
                          else ActionNormalizer.identity(config.action_dim))
        for label, n in [("", normalizer), *dataset_normalizers.items()]:
            if n.action_dim != config.action_dim:
                raise ValueError(f"The normalizer{f' of dataset {label!r}' if label else ''} has {n.action_dim} "
                                 f"action dims but config.action_dim is {config.action_dim}; fit the normalizer on "
                                 f"this dataset's actions.")
        self.config = config
        self.params = params
        self.normalizer = normalizer
        self.dataset_normalizers = dataset_normalizers
        self.model = OATModel(config)
        self._fns = functions_for(config, normalizer)
        # Pure functions (params explicit, raw units, no checks, jit-able); see TokenizerFunctions.
        self.tokenize_fn = self._fns.tokenize
        self.detokenize_fn = self._fns.detokenize
        self.encode_fn = self._fns.encode
        self.encode_latents_fn = self._fns.encode_latents
        self.decode_fn = self._fns.decode
        self.autoencode_fn = self._fns.autoencode

    @classmethod
    def init(cls, config: OATConfig, rng: jax.Array,
             normalizer: ActionNormalizer | None = None) -> "OATTokenizer":
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
        return OATTokenizer(self.config, self.params, self.dataset_normalizers[label], self.dataset_normalizers)

    @property
    def trace_counts(self) -> dict[str, int]:
        """How often each jitted API function was traced (a new batch size traces again). The jitted functions are
        shared by tokenizers with an equal config and normalizer, and so are these counts."""
        return dict(self._fns.trace_counts)

    # ----- validated Python API -----
    def _check_actions(self, actions) -> tuple[np.ndarray, bool]:
        return input_checks.check_actions(actions, self.horizon, self.action_dim)

    def _check_lengths(self, lengths: Lengths, batch: int, max_len: int) -> np.ndarray:
        return input_checks.check_lengths(lengths, batch, max_len, self.num_tokens)

    def _check_tokens(self, tokens, lengths: Lengths) -> tuple[np.ndarray, np.ndarray, bool]:
        return input_checks.check_tokens(tokens, lengths, self.num_tokens, self.vocab_size)

    def _check_codes(self, codes) -> tuple[np.ndarray, bool]:
        c = np.asarray(codes)
        shape = (self.num_tokens, self.config.latent_dim)
        if not np.issubdtype(c.dtype, np.floating) or c.ndim not in (2, 3) or c.shape[-2:] != shape:
            raise ValueError(f"codes must be a float array of shape (B, {shape[0]}, {shape[1]}) or {shape}, got "
                             f"{c.shape} {c.dtype}.")
        if not np.all(np.isfinite(c)):
            raise ValueError("codes contain NaN or Inf values.")
        unbatched = c.ndim == 2
        return (c[None] if unbatched else c).astype(np.float32), unbatched

    @staticmethod
    def _unbatch(x: jax.Array, unbatched: bool) -> jax.Array:
        return x[0] if unbatched else x

    def tokenize(self, actions) -> jax.Array:
        """Raw actions (B, H, D_a) or (H, D_a) -> token ids int32 (B, N) or (N,)."""
        x, unbatched = self._check_actions(actions)
        return self._unbatch(self._fns.jitted["tokenize"](self.params, x), unbatched)

    def detokenize(self, tokens, lengths: Lengths = None) -> jax.Array:
        """Token ids -> raw actions float32 (B, H, D_a) or (H, D_a).

        Args:
          tokens: (B, k) or (k,) integer ids in [0, vocab_size), 1 <= k <= N: a prefix of k tokens.
          lengths: None (use all k given), an int, or a (B,) int array in 1..k: decode only the first `lengths`
            tokens of each example (the rest may hold any value).
        """
        t, lens, unbatched = self._check_tokens(tokens, lengths)
        return self._unbatch(self._fns.jitted["detokenize"](self.params, t, lens), unbatched)

    def encode(self, actions, quantize: bool = True) -> jax.Array:
        """Raw actions (B, H, D_a) or (H, D_a) -> FSQ codes (quantize=True) or raw latents, float32 (B, N, d)."""
        x, unbatched = self._check_actions(actions)
        fn = self._fns.jitted["encode" if quantize else "encode_latents"]
        return self._unbatch(fn(self.params, x), unbatched)

    def decode(self, codes, lengths: Lengths = None) -> jax.Array:
        """Codes (B, N, d) or (N, d) (+ prefix lengths None/int/(B,) in 1..N) -> raw actions (B, H, D_a)."""
        c, unbatched = self._check_codes(codes)
        lens = self._check_lengths(lengths, c.shape[0], self.num_tokens)
        return self._unbatch(self._fns.jitted["decode"](self.params, c, lens), unbatched)

    def autoencode(self, actions, k: Lengths = None) -> jax.Array:
        """Tokenize then detokenize the first k tokens (None = N; int or (B,) in 1..N); raw units, input's shape."""
        x, unbatched = self._check_actions(actions)
        lens = self._check_lengths(k, x.shape[0], self.num_tokens)
        return self._unbatch(self._fns.jitted["autoencode"](self.params, x, lens), unbatched)

    # ----- persistence -----
    def save(self, path: str, overwrite: bool = False) -> str:
        """Writes config.json, normalizer.json and Orbax params to directory `path`; returns its absolute path."""
        return checkpoint.save(path, self.config, self.params, self.normalizer, overwrite=overwrite,
                               dataset_normalizers=self.dataset_normalizers or None)

    @classmethod
    def load(cls, path: str, verify: bool = True, dataset: str | None = None) -> "OATTokenizer":
        """Loads a tokenizer saved with `save`; `path` may also be a training workdir holding `tokenizer/`.

        verify: check the files against the hashes recorded at save time (False skips it for very large artifacts).
        dataset: for a tokenizer trained on a mixture, the member whose normalizer to use (None: the first one, as
          saved in normalizer.json); see `for_dataset`.
        Raises FileNotFoundError (missing path / no tokenizer there) or ValueError (a damaged or edited file, named
        in the message; config does not match params).
        """
        config, params, normalizer = checkpoint.load(path, verify=verify)
        tok = cls(config, params, normalizer, checkpoint.load_dataset_normalizers(path))
        return tok if dataset is None else tok.for_dataset(dataset)

    def __repr__(self) -> str:
        return (f"OATTokenizer(H={self.horizon}, D_a={self.action_dim}, N={self.num_tokens}, "
                f"vocab_size={self.vocab_size}, normalizer={self.normalizer.mode!r})")
