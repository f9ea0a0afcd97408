"""`OATDecoder`: codes (B, N, d) and prefix lengths -> actions (B, H, D_a); the latent slots past each prefix are
replaced by a learned mask vector."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.config import OATConfig
from oat_jax.layers import Dense, DecoderLayer, layer_norm, sincos_table, torch_linear_default


def prefix_mask(lengths: jax.Array, num_tokens: int) -> jax.Array:
    """(B,) int lengths -> (B, N) bool, True at positions < length (the kept prefix)."""
    return jnp.arange(num_tokens)[None, :] < jnp.asarray(lengths)[:, None]


class OATDecoder(nn.Module):
    """Single-pass decoder: fixed sin-cos queries cross-attend to the (prefix-masked) latent memory.

    Params: `latent_proj` (d -> E), `mask_token` (E,) trunc-normal std 0.02, `layer_{i}` (DecoderLayer),
    `head` (E -> dec_patch * D_a, zero-initialised, after a parameter-free LayerNorm). With `dec_patch` p > 1 there
    are H/p queries and each outputs p consecutive action steps.
    """

    config: OATConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        self.latent_proj = Dense(c.dec_width, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_linear_default)
        self.mask_token = self.param("mask_token", nn.initializers.truncated_normal(0.02), (c.dec_width,))
        self.layers = [DecoderLayer(c.dec_heads, c.dec_ffn_dim, dropout=c.dec_dropout,
                                    attn_dropout=c.dec_attn_dropout, dropout_rng=c.dropout_rng,
                                    eps=c.layer_norm_eps, dtype=dtype,
                                    name=f"layer_{i}") for i in range(c.dec_depth)]
        self.head = Dense(c.dec_patch * c.action_dim, dtype=jnp.float32, param_dtype=jnp.float32,
                          kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)

    def memory(self, codes: jax.Array, lengths: jax.Array) -> jax.Array:
        """Latent memory with positions >= length replaced by the mask vector.

        Args:
          codes: (B, N, d) float codes.
          lengths: (B,) int32 in 1..N.
        Returns:
          (B, N, E) float32.
        """
        c = self.config
        mem = (self.latent_proj(codes) + sincos_table(c.num_tokens, c.dec_width)).astype(jnp.float32)
        keep = prefix_mask(lengths, c.num_tokens)[..., None]
        return jnp.where(keep, mem, self.mask_token.astype(jnp.float32))

    def queries(self, batch_size: int) -> jax.Array:
        """(B, H/p, E) float32 (p = dec_patch): the fixed sin-cos table over the H/p query positions."""
        c = self.config
        table = jnp.asarray(sincos_table(c.horizon // c.dec_patch, c.dec_width))
        return jnp.broadcast_to(table, (batch_size,) + table.shape)

    def transform(self, queries: jax.Array, memory: jax.Array, deterministic: bool = True) -> jax.Array:
        """Decoder layers + head. queries: (B, T, E) or (1, T, E); memory: (B, M, E) -> (B, T, p * D_a) float32."""
        t = queries.shape[1]
        self_mask = np.tril(np.ones((t, t), bool)) if self.config.causal_decoder else None
        x = queries
        for layer in self.layers:
            x = layer(x, memory, self_mask, deterministic)
        return self.head(layer_norm(x, self.config.layer_norm_eps))

    def __call__(self, codes: jax.Array, lengths: jax.Array, deterministic: bool = True) -> jax.Array:
        """codes: (B, N, d); lengths: (B,) int32 in 1..N -> normalized actions (B, H, D_a) float32.

        The queries do not depend on the input, so without dropout the first layer's self-attention is the same
        for every example: it runs once on a batch of 1 and broadcasts in the cross-attention (about 9% fewer
        FLOPs per chunk with the paper's sizes). With dropout on, each example gets its own masks.
        """
        c = self.config
        shared = deterministic or (c.dec_dropout == 0.0 and c.dec_attn_dropout == 0.0)
        queries = self.queries(1 if shared else codes.shape[0])
        out = self.transform(queries, self.memory(codes, lengths), deterministic)  # (B, H/p, p * D_a)
        return out.reshape(out.shape[0], c.horizon, c.action_dim)
