"""Trajectory-level TensorFlow transforms: action chunks and observation histories.

A trajectory is a dict whose tensors share the leading time axis T. These functions run eagerly or inside
`tf.data` maps (graph mode); they only gather, so they are cheap and never decode images.

Chunking rule (the reference's): every timestep t starts a chunk of the H actions t..t+H-1; steps past the episode
end repeat the last action and are False in the pad mask; chunks never cross episodes (one trajectory in, its own
T chunks out).
"""

from __future__ import annotations

import tensorflow as tf


def chunk_indices(num_steps: tf.Tensor, horizon: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Gather indices and pad mask for the chunks of one trajectory.

    Args:
      num_steps: scalar int, T >= 1.
      horizon: H, steps per chunk.
    Returns:
      indices: (T, H) int32, min(t + h, T - 1).
      pad_mask: (T, H) bool, True where t + h < T (a real step).
    """
    if horizon < 1:
        raise ValueError(f"horizon={horizon} must be >= 1.")
    num_steps = tf.cast(num_steps, tf.int32)
    raw = tf.range(num_steps)[:, None] + tf.range(horizon)[None, :]  # (T, H)
    return tf.minimum(raw, num_steps - 1), raw < num_steps


def chunk_actions(actions: tf.Tensor, horizon: int) -> dict[str, tf.Tensor]:
    """All action chunks of one trajectory.

    Args:
      actions: (T, D_a) float, T >= 1.
      horizon: H.
    Returns:
      {"actions": (T, H, D_a) float32, "action_pad_mask": (T, H) bool}.
    """
    indices, pad_mask = chunk_indices(tf.shape(actions)[0], horizon)  # (T, H), (T, H)
    chunks = tf.gather(tf.cast(actions, tf.float32), indices)  # (T, H, D_a)
    return {"actions": chunks, "action_pad_mask": pad_mask}


def observation_history(x: tf.Tensor, n_obs_steps: int) -> tf.Tensor:
    """History of the last `n_obs_steps` frames at every timestep, the first frame repeated at the start.

    Args:
      x: (T, ...) any dtype (encoded image strings stay strings).
      n_obs_steps: K >= 1.
    Returns:
      (T, K, ...): out[t, k] = x[max(t - K + 1 + k, 0)], so out[t, -1] = x[t].
    """
    if n_obs_steps < 1:
        raise ValueError(f"n_obs_steps={n_obs_steps} must be >= 1.")
    num_steps = tf.shape(x)[0]
    indices = tf.range(num_steps)[:, None] + tf.range(1 - n_obs_steps, 1)[None, :]  # (T, K)
    return tf.gather(x, tf.maximum(indices, 0))  # (T, K, ...)
