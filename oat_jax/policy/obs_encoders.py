"""Observation encoders of the token policy: observation history -> memory tokens (B, M, E) for cross-attention.

- `StateEncoder` (default): each of the K frames' (normalized) state vector goes through an MLP to one token.
- `ImageEncoder`: a small strided conv net + spatial softmax (keypoints) per frame and camera, one token each.
Both add a learned embedding per frame (and per camera), so the policy knows which frame a token comes from.
- `InstructionEncoder`: the language instruction (an id of the training data's instructions) to one token.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_init = nn.initializers.normal(stddev=0.02)


class StateEncoder(nn.Module):
    """(B, K, obs_dim) float32 normalized states -> (B, K, E): Dense(hidden) -> GELU -> Dense(E) + frame embedding."""

    width: int
    hidden: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, state: jax.Array) -> jax.Array:
        dense = lambda f, name: nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        h = dense(self.width, "fc2")(nn.gelu(dense(self.hidden, "fc1")(state.astype(self.dtype))))
        frame = self.param("frame_embed", _init, (state.shape[1], self.width), jnp.float32)
        return h.astype(jnp.float32) + frame


def spatial_softmax(features: jax.Array) -> jax.Array:
    """Expected (x, y) image coordinate in [-1, 1] of each channel's softmax over pixels.

    Args:
      features: (N, h, w, C).
    Returns:
      (N, 2 * C) float32: x coordinates of the C channels, then y coordinates.
    """
    n, h, w, c = features.shape
    probs = jax.nn.softmax(features.astype(jnp.float32).reshape(n, h * w, c), axis=1)
    ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
    ex = jnp.einsum("npc,p->nc", probs, xs.reshape(-1))
    ey = jnp.einsum("npc,p->nc", probs, ys.reshape(-1))
    return jnp.concatenate([ex, ey], axis=-1)


class ImageEncoder(nn.Module):
    """(B, K, cams, Hi, Wi, C) uint8 or float images -> (B, K * cams, E).

    Per image: scale to [-1, 1], conv layers (3x3, stride 2, GELU) with `channels`, a 1x1 conv to `keypoints`
    channels, spatial softmax -> 2 * keypoints coordinates -> Dense(E); plus learned frame and camera embeddings.
    """

    width: int
    channels: Sequence[int] = (32, 64, 64)
    keypoints: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        b, k, cams = images.shape[:3]
        x = images.reshape((b * k * cams,) + images.shape[3:])
        x = x.astype(jnp.float32) / 127.5 - 1.0 if images.dtype == jnp.uint8 else x.astype(jnp.float32)
        x = x.astype(self.dtype)
        for i, ch in enumerate(self.channels):
            x = nn.gelu(nn.Conv(ch, (3, 3), strides=(2, 2), dtype=self.dtype, param_dtype=jnp.float32,
                                name=f"conv{i}")(x))
        x = nn.Conv(self.keypoints, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="keypoint_conv")(x)
        h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="proj")(spatial_softmax(x))
        h = h.astype(jnp.float32).reshape(b, k, cams, self.width)
        frame = self.param("frame_embed", _init, (k, 1, self.width), jnp.float32)
        camera = self.param("camera_embed", _init, (1, cams, self.width), jnp.float32)
        return (h + frame + camera).reshape(b, k * cams, self.width)


class InstructionEncoder(nn.Module):
    """(B,) int32 instruction ids -> (B, 1, E): one learned embedding per instruction of the training data (id 0 =
    an instruction the policy was not trained on).

    This is the extension point for a pretrained text encoder: a module that maps (B, L, D_text) features of the
    instruction to (B, L', E) memory tokens can take its place in the policies' `encode`, with the features
    computed in the data pipeline instead of the ids.
    """

    num_instructions: int
    width: int

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = nn.Embed(self.num_instructions + 1, self.width, embedding_init=_init, param_dtype=jnp.float32,
                         name="embed")
        return table(ids.astype(jnp.int32))[:, None, :]
