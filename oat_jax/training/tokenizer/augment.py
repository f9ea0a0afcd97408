"""Action-chunk augmentation for tokenizer training (inside the jitted train step, in normalized units).

A tokenizer is an autoencoder of action chunks: any transformation that maps a plausible chunk to another plausible
chunk widens what it learns to reconstruct. On Meta-World, training on the ten MT10 tasks with these augmentations
lowers the reconstruction error on the 40 unseen tasks by about 2-3x (docs/TOKENIZER_FIDELITY.md).
Each example is transformed independently:
- flip: with probability `flip_prob`, every action dimension's sign is flipped with probability 1/2 (mirrored
  motions; normalized ranges are symmetric, so values stay in range);
- splice: with probability `splice_prob`, the steps from a uniformly drawn cut 1..H-1 on come from another chunk of
  the batch (motions that switch mid-chunk, as at the boundary between two phases of a task).
All probabilities 0 (the reference) leaves the batch untouched.

Only the examples decoded at all N tokens are augmented (`gate_by_length`); the short-prefix decodes see real chunks.
Short prefixes are small codebooks (k = 1 is one token, 1000 codes with the default levels); spreading them over
sign-flipped and spliced chunks that the data never contains costs them fidelity on real chunks (k = 1 0.073 when
every example was augmented, 0.051-0.060 this way, k = 8 0.0072 -> 0.0064-0.0071; docs/TOKENIZER_FIDELITY.md,
finding 7), while the full-length decodes have the capacity to gain robustness from it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FIELDS = ("flip_prob", "splice_prob")


def check_config(aug) -> None:
    """Raises ValueError naming the first `config.augment` probability outside [0, 1]."""
    for name in FIELDS:
        value = float(getattr(aug, name, 0.0))
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"config.augment.{name} must be a probability in [0, 1], got {value}.")


def gate_by_length(original: jax.Array, augmented: jax.Array, lengths: jax.Array, num_tokens: int) -> jax.Array:
    """Keeps the augmented chunk only for the examples decoded at all `num_tokens` tokens.

    Args:
      original, augmented: (B, H, D_a) float32 chunks before and after `augment_chunks`.
      lengths: (B,) int32 prefix length of each example (its shortest decode; `Objective.row_lengths`).
      num_tokens: N.
    Returns:
      (B, H, D_a) float32.
    """
    return jnp.where((lengths >= num_tokens)[:, None, None], augmented, original)


def is_active(aug) -> bool:
    """True when any augmentation probability is above 0."""
    return aug is not None and any(float(getattr(aug, name, 0.0)) > 0.0 for name in FIELDS)


def augment_chunks(x: jax.Array, rng: jax.Array, aug) -> jax.Array:
    """Randomly flips and splices action chunks.

    Args:
      x: (B, H, D_a) float32 normalized action chunks.
      rng: PRNG key.
      aug: `config.augment` (`run_config.Augment`) (flip_prob, splice_prob).
    Returns:
      (B, H, D_a) float32, the augmented chunks.
    """
    b, h, d = x.shape
    keys = jax.random.split(rng, 6)
    flip_p, splice_p = (float(getattr(aug, name, 0.0)) for name in FIELDS)
    if flip_p > 0:
        signs = jnp.where(jax.random.bernoulli(keys[0], 0.5, (b, 1, d)), -1.0, 1.0)
        chosen = jax.random.bernoulli(keys[1], flip_p, (b, 1, 1))
        x = jnp.where(chosen, x * signs, x)
    if splice_p > 0 and h > 1:
        cut = jax.random.randint(keys[3], (b, 1, 1), 1, h)
        other = x[jax.random.permutation(keys[4], b)]
        chosen = jax.random.bernoulli(keys[5], splice_p, (b, 1, 1))
        x = jnp.where(chosen & (jnp.arange(h)[None, :, None] >= cut), other, x)
    return x
