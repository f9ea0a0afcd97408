"""Layers of the autoregressive token policy: RMSNorm, multi-head attention with a preallocated KV cache, the
pre-norm decoder block (causal self-attention, cross-attention to observation memory, GELU MLP).

Conventions: activations (B, T, E); params float32; matmuls in `dtype`; norms and the softmax in float32.
Every attention has two entry points that share params and math: `__call__` over a whole sequence and `step`
for one new position written into a cache of fixed length S (positions > pos are masked out), so cached decoding
reproduces the full-sequence forward up to float rounding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_init = nn.initializers.normal(stddev=0.02)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, computed in float32; scale (E,) initialised to 1. (..., E) -> float32."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps) * scale


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, dtype: Dtype) -> jax.Array:
    """Scaled dot-product attention.

    Args:
      q: (B, Tq, heads, hd); k, v: (B, Tk, heads, hd); mask: bool broadcastable to (B, heads, Tq, Tk), True = may
        attend, or None.
    Returns:
      (B, Tq, heads, hd) in `dtype`.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.float32(np.sqrt(q.shape[-1]))
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class MultiHeadAttention(nn.Module):
    """Attention with separate bias-free q/k/v/out projections (E -> E).

    `__call__(x_q, x_kv, mask)` attends over a whole sequence; `project_kv(x_kv)` gives the (k, v) of a memory once
    (cross-attention during decoding); `step(x, pos, cache_k, cache_v)` writes the new position's k/v at `pos` into
    the (B, S, heads, hd) cache and attends over positions 0..pos.
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    def _split(self, t: jax.Array) -> jax.Array:
        return t.reshape(t.shape[:-1] + (self.num_heads, t.shape[-1] // self.num_heads))

    @nn.compact
    def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None, mask: jax.Array | None = None, *,
                 kv: tuple[jax.Array, jax.Array] | None = None, cache: tuple[jax.Array, jax.Array] | None = None,
                 pos: jax.Array | None = None):
        """Modes:
          full: x_q (B, T, E), x_kv (B, Tk, E), mask -> (B, T, E).
          precomputed memory: x_q (B, T, E), kv=(k, v) each (B, Tk, heads, hd) -> (B, T, E).
          cached step: x_q (B, 1, E), cache=(k, v) each (B, S, heads, hd), pos int32 scalar
            -> ((B, 1, E), new cache).
          kv only: x_q None, x_kv (B, Tk, E) -> (k, v) each (B, Tk, heads, hd).
        """
        width = (x_q if x_q is not None else x_kv).shape[-1]
        dense = lambda name: nn.Dense(width, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                                      kernel_init=_init, name=name)
        q_proj, k_proj, v_proj, o_proj = dense("query"), dense("key"), dense("value"), dense("out")
        if x_q is None:
            return self._split(k_proj(x_kv)), self._split(v_proj(x_kv))
        q = self._split(q_proj(x_q))
        new_cache = None
        if kv is not None:
            k, v = kv
        elif cache is not None:
            k_new, v_new = self._split(k_proj(x_q)), self._split(v_proj(x_q))
            zero = jnp.zeros((), jnp.int32)
            k = jax.lax.dynamic_update_slice(cache[0], k_new.astype(cache[0].dtype), (zero, pos, zero, zero))
            v = jax.lax.dynamic_update_slice(cache[1], v_new.astype(cache[1].dtype), (zero, pos, zero, zero))
            new_cache = (k, v)
            mask = (jnp.arange(k.shape[1]) <= pos)[None, None, None, :]
        else:
            k, v = self._split(k_proj(x_kv)), self._split(v_proj(x_kv))
        out = attend(q, k.astype(self.dtype), v.astype(self.dtype), mask, self.dtype)
        out = o_proj(out.reshape(out.shape[:-2] + (width,)))
        return out if new_cache is None else (out, new_cache)


class PolicyBlock(nn.Module):
    """Pre-norm decoder block: x += SelfAttn(RMS(x)) (causal); x += CrossAttn(RMS(x), memory); x += MLP(RMS(x)).

    MLP = Dense(mlp_dim) -> GELU (tanh approximation) -> Dense(E), with biases; dropout after each sub-layer.
    """

    width: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    def setup(self):
        self.norm1, self.norm2, self.norm3 = RMSNorm(name="norm1"), RMSNorm(name="norm2"), RMSNorm(name="norm3")
        self.self_attn = MultiHeadAttention(self.num_heads, dtype=self.dtype, name="self_attn")
        self.cross_attn = MultiHeadAttention(self.num_heads, dtype=self.dtype, name="cross_attn")
        dense = lambda features, name: nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                                                kernel_init=_init, name=name)
        self.fc1, self.fc2 = dense(self.mlp_dim, "fc1"), dense(self.width, "fc2")
        self.drop = nn.Dropout(self.dropout)

    def _mlp(self, x: jax.Array) -> jax.Array:
        return self.fc2(nn.gelu(self.fc1(x)))

    def memory_kv(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
        """memory (B, M, E) -> cross-attention (k, v), each (B, M, heads, hd) in `dtype`."""
        return self.cross_attn(None, memory)

    def __call__(self, x: jax.Array, memory_kv: tuple[jax.Array, jax.Array], mask: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """x (B, T, E); memory_kv from `memory_kv`; mask bool (T, T) causal. Returns (B, T, E) float32."""
        h = self.norm1(x).astype(self.dtype)
        x = x + self.drop(self.self_attn(h, h, mask), deterministic=deterministic)
        x = x + self.drop(self.cross_attn(self.norm2(x).astype(self.dtype), kv=memory_kv),
                          deterministic=deterministic)
        return x + self.drop(self._mlp(self.norm3(x).astype(self.dtype)), deterministic=deterministic)

    def step(self, x: jax.Array, pos: jax.Array, cache: tuple[jax.Array, jax.Array],
             memory_kv: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One position: x (B, 1, E), pos int32 scalar, cache (k, v) each (B, S, heads, hd).
        Returns ((B, 1, E) float32, updated cache). No dropout (decoding is deterministic given the sampled ids)."""
        h, cache = self.self_attn(self.norm1(x).astype(self.dtype), cache=cache, pos=pos)
        x = x + h
        x = x + self.cross_attn(self.norm2(x).astype(self.dtype), kv=memory_kv)
        return x + self._mlp(self.norm3(x).astype(self.dtype)), cache
