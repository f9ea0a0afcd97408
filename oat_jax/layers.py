"""Building blocks shared by the encoder and decoder: LayerNorm, sin-cos tables, attention, MLPs, blocks.

Conventions: activations are (B, T, E); params are float32; matmuls run in `dtype`; LayerNorm statistics and the
attention softmax are computed in float32. Dense kernels are stored (in, out) (PyTorch stores (out, in)).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.config import DROPOUT_RNGS

Dtype = Any
Initializer = Callable[..., jax.Array]

xavier_uniform = nn.initializers.xavier_uniform()
# PyTorch's default nn.Linear weight init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")




def _mix32(x: jax.Array) -> jax.Array:
    """A bijective avalanche mix of uint32 values (the 'lowbias32' integer hash finaliser)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Counter-based pseudo-random bits: hash(element index, key) for every element.

    Much cheaper than threefry on CPU (about 10x for dropout masks) and good enough for dropout; not for
    anything that needs cryptographic or long-stream statistical quality.

    Args:
      rng: a PRNG key (typed key array or raw uint32 key data).
      shape: output shape; at most 2**32 elements.
    Returns:
      uint32 array of `shape`, uniformly distributed bits.
    """
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    data = jnp.asarray(data).astype(jnp.uint32).reshape(-1)
    size = int(np.prod(shape))
    if size > 2 ** 32:
        raise ValueError(f"hash_bits supports at most 2**32 elements, got shape {shape}; use dropout_rng='threefry'.")
    index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _mix32(_mix32(index * jnp.uint32(0x9E3779B9) + data[0]) ^ data[-1])


class Dropout(nn.Module):
    """Inverted dropout on the "dropout" RNG stream: zero with probability `rate`, scale the rest by 1/(1-rate).

    Attributes:
      rate: drop probability in [0, 1).
      rng_impl: 'hash' (`hash_bits`, cheap on CPU) or 'threefry' (`jax.random.bernoulli`, as flax's nn.Dropout).
    """

    rate: float
    rng_impl: str = "hash"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        """x: any shape and float dtype -> same shape and dtype."""
        if deterministic or self.rate == 0.0:
            return x
        if self.rng_impl not in DROPOUT_RNGS:
            raise ValueError(f"Dropout.rng_impl must be one of {DROPOUT_RNGS}, got {self.rng_impl!r}.")
        rng = self.make_rng("dropout")
        keep_prob = 1.0 - self.rate
        if self.rng_impl == "hash":
            threshold = min(int(round(keep_prob * 2.0 ** 32)), 2 ** 32 - 1)
            keep = hash_bits(rng, x.shape) < jnp.uint32(threshold)
        else:
            keep = jax.random.bernoulli(rng, keep_prob, x.shape)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))


class Dense(nn.Module):
    """`flax.linen.Dense` with the same params (`kernel` (in, out), `bias` (out,)) that multiplies a 2-D view.

    Flattening the leading axes before the matmul gives XLA:CPU plain 2-D dots, whose backward pass needs far
    fewer transposes than the N-D `dot_general` of nn.Dense (about 25% faster training steps on CPU).

    Attributes:
      features: output size; use_bias: add a bias; dtype: compute dtype; param_dtype: storage dtype;
      kernel_init / bias_init: initialisers.
    """

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()  # nn.Dense's default
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., in) -> (..., features) in `dtype`."""
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        flat = jnp.asarray(x, self.dtype).reshape(-1, x.shape[-1])  # (prod(...), in)
        y = jnp.dot(flat, kernel.astype(self.dtype)).reshape(x.shape[:-1] + (self.features,))  # (..., features)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return y


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Parameter-free LayerNorm over the last axis, computed in float32.

    Args:
      x: (..., C) any float dtype.
    Returns:
      (..., C) float32 with zero mean and unit variance per row.
    """
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def sincos_table(length: int, width: int) -> np.ndarray:
    """Fixed 1-D sin-cos position table (a constant, not a parameter).

    omega_i = 10000 ** (-i / (width/2)), i = 0..width/2-1; row t = concat(sin(t * omega), cos(t * omega)).

    Returns:
      (length, width) float32 numpy array.
    """
    if width % 2:
        raise ValueError(f"sin-cos table width must be even, got {width}.")
    omega = 1.0 / 10000.0 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
    angles = np.arange(length, dtype=np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections.

    Attributes:
      num_heads: heads; head_dim = E // num_heads.
      use_bias: biases on q, k, v and out projections.
      qk_norm: parameter-free LayerNorm over head_dim on q and k of each head.
      attn_dropout: dropout rate on the attention probabilities ("dropout" RNG stream).
      dropout_rng: 'hash' | 'threefry', see `Dropout`.
      eps: LayerNorm epsilon of the QK-norm.
      dtype: compute dtype of the projections.
      kernel_init: init of all four projection kernels (biases are zero).
    """

    num_heads: int
    use_bias: bool = True
    qk_norm: bool = False
    attn_dropout: float = 0.0
    dropout_rng: str = "hash"
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    kernel_init: Initializer = xavier_uniform

    @nn.compact
    def __call__(self, x_q: jax.Array, x_kv: jax.Array, mask: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """x_q: (B, Tq, E) queries (or (1, Tq, E): one set shared by the batch); x_kv: (B, Tk, E) keys/values;
        mask: bool broadcastable to (B, heads, Tq, Tk), True where query row may attend key column.
        Returns (B, Tq, E) in `dtype`."""
        width = x_q.shape[-1]
        head_dim = width // self.num_heads
        dense = lambda name: Dense(width, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                                   kernel_init=self.kernel_init, name=name)
        split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim))
        q, k, v = split(dense("query")(x_q)), split(dense("key")(x_kv)), split(dense("value")(x_kv))
        if q.shape[0] != k.shape[0]:  # queries shared by the whole batch (x_q has batch 1): project once
            q = jnp.broadcast_to(q, k.shape[:1] + q.shape[1:])
        if self.qk_norm:
            q = layer_norm(q, self.eps).astype(self.dtype)
            k = layer_norm(k, self.eps).astype(self.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(head_dim).astype(np.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        if self.attn_dropout > 0.0:
            probs = Dropout(self.attn_dropout, self.dropout_rng)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return dense("out")(out.reshape(out.shape[:-2] + (width,)))


class SwiGLU(nn.Module):
    """Bias-free SwiGLU MLP: fc2(silu(fc1 x) * fc3 x); (B, T, E) -> (B, T, E)."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda features, name: Dense(features, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                                             kernel_init=xavier_uniform, name=name)
        h = nn.silu(dense(self.hidden, "fc1")(x)) * dense(self.hidden, "fc3")(x)
        return dense(x.shape[-1], "fc2")(h)


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: x += Drop(Attn(LN(x))); x += Drop(SwiGLU(LN(x))).

    LayerNorms are parameter-free; attention has QK-norm, no biases and no dropout on the probabilities.
    """

    num_heads: int
    mlp_hidden: int
    dropout: float = 0.0
    dropout_rng: str = "hash"  # 'hash' | 'threefry', see `Dropout`.
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool = True,
                 num_outputs: int | None = None) -> jax.Array:
        """x: (B, T, E); mask: bool (T, T). Returns (B, T, E), or only the last `num_outputs` rows
        (B, num_outputs, E): their queries attend all T rows, and the other rows' attention and MLP are skipped
        (exactly the same values as slicing the full output)."""
        drop = lambda t: Dropout(self.dropout, self.dropout_rng)(t, deterministic=deterministic)
        h = layer_norm(x, self.eps)
        if num_outputs is not None:
            x, mask = x[:, -num_outputs:], mask[-num_outputs:]  # (B, n, E), (n, T)
        h = Attention(self.num_heads, use_bias=False, qk_norm=True, eps=self.eps, dtype=self.dtype, name="attn")(
            h[:, -x.shape[1]:], h, mask, deterministic)
        x = x + drop(h)
        h = SwiGLU(self.mlp_hidden, dtype=self.dtype, name="mlp")(layer_norm(x, self.eps))
        return x + drop(h)


class DecoderLayer(nn.Module):
    """PyTorch-style pre-norm transformer decoder layer (norm_first=True).

    x += Drop(SelfAttn(norm1(x))); x += Drop(CrossAttn(norm2(x), memory)); x += Drop(FFN(norm3(x))),
    FFN = linear2(Drop(gelu_exact(linear1(.)))). Affine LayerNorms, biases everywhere, dropout on attention probs.
    """

    num_heads: int
    ffn_dim: int
    dropout: float = 0.0
    attn_dropout: float = 0.0
    dropout_rng: str = "hash"  # 'hash' | 'threefry', see `Dropout`.
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array, self_mask: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """x: (B, T, E) queries, or (1, T, E) shared by the batch (the self-attention sub-layer then runs once);
        memory: (B, M, E); self_mask: bool (T, T) or None. Returns (B, T, E)."""
        drop = lambda t: Dropout(self.dropout, self.dropout_rng)(t, deterministic=deterministic)
        norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name)
        attn = lambda name: Attention(self.num_heads, use_bias=True, attn_dropout=self.attn_dropout,
                                      dropout_rng=self.dropout_rng, eps=self.eps, dtype=self.dtype, name=name)
        h = norm("norm1")(x)
        x = x + drop(attn("self_attn")(h, h, self_mask, deterministic))
        x = x + drop(attn("cross_attn")(norm("norm2")(x), memory, None, deterministic))
        dense = lambda features, name: Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                                             kernel_init=torch_linear_default, name=name)
        h = drop(nn.gelu(dense(self.ffn_dim, "linear1")(norm("norm3")(x)), approximate=False))
        return x + drop(dense(x.shape[-1], "linear2")(h))
