"""`RegisterEncoder`: action chunk (B, H, D_a) -> N ordered latents (B, N, d)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.config import OATConfig
from oat_jax.layers import EncoderBlock, layer_norm, sincos_table, xavier_uniform


def register_attention_mask(horizon: int, num_registers: int, causal_registers: bool = True) -> np.ndarray:
    """Attention mask over the sequence [H action tokens, N registers].

    Action tokens attend all action tokens and no register; registers attend all action tokens; register i
    attends register j iff j <= i (`causal_registers`) or always (otherwise).

    Returns:
      (H+N, H+N) bool numpy array, True where query row may attend key column.
    """
    size = horizon + num_registers
    mask = np.zeros((size, size), dtype=bool)
    mask[:, :horizon] = True
    regs = np.tril(np.ones((num_registers, num_registers), bool)) if causal_registers else True
    mask[horizon:, horizon:] = regs
    return mask


class RegisterEncoder(nn.Module):
    """Transformer encoder that summarises an action chunk into N learned registers.

    Params: `patch_proj` (D_a -> E, bias), `registers` (N, E) ~ N(0, 1), `block_{i}` (pre-norm blocks),
    `head` (E -> d, zero-initialised weight and bias).
    """

    config: OATConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        self.patch_proj = nn.Dense(c.enc_width, dtype=dtype, param_dtype=jnp.float32, kernel_init=xavier_uniform)
        self.registers = self.param("registers", nn.initializers.normal(1.0), (c.num_tokens, c.enc_width))
        self.blocks = [EncoderBlock(c.enc_heads, c.enc_mlp_hidden, dropout=c.enc_dropout, eps=c.layer_norm_eps,
                                    dtype=dtype, name=f"block_{i}") for i in range(c.enc_depth)]
        self.head = nn.Dense(c.latent_dim, dtype=jnp.float32, param_dtype=jnp.float32,
                             kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)

    def hidden(self, actions: jax.Array, deterministic: bool = True) -> jax.Array:
        """Transformer outputs for every position.

        Args:
          actions: (B, H, D_a) normalized actions.
        Returns:
          (B, H+N, E) float32: H action-token outputs followed by N register outputs.
        """
        c = self.config
        x = self.patch_proj(actions) + sincos_table(c.horizon, c.enc_width)
        regs = jnp.broadcast_to(self.registers, (x.shape[0],) + self.registers.shape)
        x = jnp.concatenate([x.astype(jnp.float32), regs], axis=1)
        mask = register_attention_mask(c.horizon, c.num_tokens, c.causal_registers)
        for block in self.blocks:
            x = block(x, mask, deterministic)
        return x.astype(jnp.float32)

    def __call__(self, actions: jax.Array, deterministic: bool = True) -> jax.Array:
        """actions: (B, H, D_a) normalized -> latents (B, N, d) float32 (before FSQ)."""
        regs = self.hidden(actions, deterministic)[:, self.config.horizon:]
        return self.head(layer_norm(regs, self.config.layer_norm_eps))
