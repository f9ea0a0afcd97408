"""`load_pretrained`: an OAT tokenizer for a user's own jitted / sharded JAX code: params plus pure functions.

Accepts everything `OATTokenizer.load` does (a tokenizer directory, a training workdir with `step`, a checkpoint
step directory; local paths or any `etils.epath` URL such as gs://bucket/run). oat_jax imports no TensorFlow; epath
itself serves gs:// through tf.io.gfile when TensorFlow is installed, and through fsspec + gcsfs otherwise.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax

from oat_jax.tokenizer import OATTokenizer


class Pretrained(NamedTuple):
    """What `load_pretrained` returns.

    tokenizer: the `OATTokenizer` (config, params, normalizer; validated host API).
    params: the float32 param tree as a plain nested dict of jax.Arrays (placed with the requested sharding).
    tokenize_fn: pure `tokenize_fn(params, actions (B, H, D_a) or (H, D_a) f32 raw units) -> (B, N) or (N,) int32`.
    detokenize_fn: pure `detokenize_fn(params, tokens (B, k) or (k,) int, lengths None | int | (B,) in 1..k)
      -> (B, H, D_a) or (H, D_a) f32 raw units` (NaN for an out-of-range length or id); both jit- and vmap-able.
    """

    tokenizer: OATTokenizer
    params: dict
    tokenize_fn: Callable[..., jax.Array]
    detokenize_fn: Callable[..., jax.Array]


def load_pretrained(path, step=None, sharding=None) -> Pretrained:
    """Loads an OAT tokenizer for use inside a user's jitted / sharded JAX code.

    Args:
      path: a tokenizer directory, a training workdir or a checkpoint step directory (local or URL).
      step: for a workdir: None = `<workdir>/tokenizer` if present, else the latest checkpoint; 'latest', 'best'
        or an int = the EMA params of that checkpoint. Must be None for a directory.
      sharding: None = the first local device; one `jax.sharding.Sharding` for every leaf (e.g.
        `NamedSharding(mesh, P())` to replicate over a mesh); or a pytree of Shardings shaped like the params.
    Returns:
      Pretrained(tokenizer, params, tokenize_fn, detokenize_fn); the functions are pure in `params`.
    Raises:
      FileNotFoundError / ValueError as `OATTokenizer.load`.
    """
    tokenizer = OATTokenizer.load(path, step, sharding=sharding)
    return Pretrained(tokenizer, tokenizer.params, tokenizer.tokenize_fn, tokenizer.detokenize_fn)
