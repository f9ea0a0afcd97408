"""`OATModel`: RegisterEncoder + FSQ + OATDecoder as one pure linen module (used by training and the tokenizer).

All inputs and outputs are in normalized action units; `OATTokenizer` adds the normalizer and input checks.
RNG stream: "dropout" (ordinary dropout). The model decodes the prefix lengths it is given; which lengths training
uses (nested dropout) is the objective's choice (oat_jax/training/tokenizer/objective.py).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from oat_jax import fsq
from oat_jax.config import OATConfig
from oat_jax.decoder import OATDecoder
from oat_jax.encoder import ConvEncoder, RegisterEncoder


def broadcast_lengths(lengths, batch_size: int, num_tokens: int) -> jax.Array:
    """None (all N), an int, or a (B,) int array -> (B,) int32. No range check (the tokenizer API checks)."""
    if lengths is None:
        lengths = num_tokens
    return jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (batch_size,))


class OATModel(nn.Module):
    """Ordered Action Tokenizer network.

    Params: {"encoder": RegisterEncoder (or ConvEncoder, config.encoder='conv') params, "decoder": OATDecoder
    params}; FSQ has none.
    """

    config: OATConfig

    def setup(self):
        self.encoder = (ConvEncoder if self.config.encoder == "conv" else RegisterEncoder)(self.config, name="encoder")
        self.decoder = OATDecoder(self.config, name="decoder")
        self.quantizer = fsq.FSQ(self.config.levels)

    def __call__(self, actions: jax.Array, deterministic: bool = True,
                 lengths: jax.Array | int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Autoencodes a batch of normalized action chunks.

        Args:
          actions: (B, H, D_a) float, normalized units.
          deterministic: False turns on dropout ("dropout" RNG).
          lengths: kept prefix length, an int or (B,) int in 1..N; None = all N.
        Returns:
          recon: (B, H, D_a) float32, normalized units.
          aux: {"latents": (B, N, d) f32, "codes": (B, N, d) f32, "tokens": (B, N) int32, "lengths": (B,) int32}.
        """
        latents = self.encoder(actions, deterministic)
        codes, tokens = self.quantizer(latents)
        lengths = broadcast_lengths(lengths, actions.shape[0], self.config.num_tokens)
        recon = self.decoder(codes, lengths, deterministic)
        return recon, {"latents": latents, "codes": codes, "tokens": tokens, "lengths": lengths}

    def encode(self, actions: jax.Array, deterministic: bool = True) -> jax.Array:
        """(B, H, D_a) normalized actions -> latents (B, N, d) float32 (before quantization)."""
        return self.encoder(actions, deterministic)

    def codes(self, actions: jax.Array, deterministic: bool = True) -> jax.Array:
        """(B, H, D_a) normalized actions -> quantized codes (B, N, d) float32 (straight-through gradient)."""
        return self.quantizer(self.encoder(actions, deterministic))[0]

    def tokenize(self, actions: jax.Array) -> jax.Array:
        """(B, H, D_a) normalized actions -> tokens (B, N) int32 in [0, vocab_size)."""
        return self.quantizer(self.encoder(actions, True))[1]

    def decode(self, codes: jax.Array, lengths: jax.Array | int | None = None,
               deterministic: bool = True) -> jax.Array:
        """codes (B, N, d) (+ prefix lengths int or (B,), None = N) -> normalized actions (B, H, D_a) float32."""
        lengths = broadcast_lengths(lengths, codes.shape[0], self.config.num_tokens)
        return self.decoder(codes, lengths, deterministic)

    def detokenize(self, tokens: jax.Array, lengths: jax.Array | int | None = None) -> jax.Array:
        """tokens (B, N) int (+ prefix lengths int or (B,), None = N) -> normalized actions (B, H, D_a) float32.

        Positions >= length are replaced by the mask vector, so their ids are ignored.
        """
        codes = fsq.indices_to_codes(tokens, self.config.levels)
        return self.decode(codes, lengths, deterministic=True)


def _example_actions(config: OATConfig) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, config.horizon, config.action_dim), jnp.float32)


def init_params(config: OATConfig, rng: jax.Array) -> dict:
    """Freshly initialised params ({"encoder": ..., "decoder": ...}, float32) for `config`."""
    model = OATModel(config)
    init = jax.jit(lambda key: model.init({"params": key}, jnp.zeros((1, config.horizon, config.action_dim))))
    return init(rng)["params"]


@functools.lru_cache(maxsize=32)
def abstract_params(config: OATConfig) -> dict:
    """The param tree `config` implies, as jax.ShapeDtypeStruct leaves (nothing is computed; cached per config,
    do not mutate the returned dicts)."""
    model = OATModel(config)
    return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), _example_actions(config))["params"]


def param_count(params) -> int:
    """Total number of scalars in a param tree (anything whose leaves have `.shape`)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def check_params(config: OATConfig, params, source: str = "params") -> None:
    """Raises ValueError if the tree structure or any leaf shape of `params` differs from what `config` implies.

    Args:
      params: a param tree whose leaves have `.shape` (arrays, ShapeDtypeStructs or Orbax array metadata).
      source: what `params` is, for the message (e.g. a checkpoint path).
    """
    expected = {jax.tree_util.keystr(p): tuple(v.shape)
                for p, v in jax.tree_util.tree_leaves_with_path(abstract_params(config))}
    actual = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(params)}
    problems = [f"missing {k}" for k in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {k}" for k in sorted(set(actual) - set(expected))]
    problems += [f"{k}: shape {actual[k]} but the config implies {expected[k]}"
                 for k in sorted(set(expected) & set(actual)) if expected[k] != actual[k]]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} differences)" if len(problems) > 5 else "")
        raise ValueError(f"The config does not match {source}: {shown}. Use the config the params were trained "
                         f"with.")
