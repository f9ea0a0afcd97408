"""Small shared fixtures for the tokenizer-core tests: a tiny config and params with non-zero heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from oat_jax import OATConfig, init_params
from oat_jax.model import abstract_params

# Tiny but structurally complete: several registers, odd and even FSQ levels, >1 head, >1 decoder layer.
TINY = OATConfig(action_dim=3, horizon=8, num_tokens=8, levels=(5, 4, 3), enc_width=32, enc_depth=2, enc_heads=2,
                 dec_width=32, dec_depth=2, dec_heads=2, dec_ffn_dim=64)


@functools.lru_cache(maxsize=None)
def initial_params(config, seed=0):
    """`init_params(config, key(seed))`, computed once per process (compiling an init costs seconds on CPU).
    Do not mutate the returned tree."""
    return init_params(config, jax.random.key(seed))


@functools.lru_cache(maxsize=None)
def random_params(config, seed=0):
    """Random params of the right tree and shapes, drawn on the host without compiling an init: 2-D kernels
    N(0, 1/fan_in), every other leaf (biases, LayerNorm scales, registers, mask vector, heads) N(0, 0.3^2), so the
    zero-initialised heads are non-zero and every output depends on its inputs. Cached; do not mutate the tree."""
    rng = np.random.default_rng(seed)
    draw = lambda s: (rng.standard_normal(s.shape) * (s.shape[0] ** -0.5 if len(s.shape) == 2 else 0.3))
    return jax.tree.map(lambda s: jnp.asarray(draw(s).astype(np.float32)), abstract_params(config))


def smooth_actions(batch, horizon, action_dim, seed=0, max_freq=1.5):
    """(batch, horizon, action_dim) float32 smooth trajectories in about [-1, 1]: random sinusoids of at most
    `max_freq` periods per chunk."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    amp, freq, phase = (rng.uniform(lo, hi, (batch, 1, action_dim)) for lo, hi in ((0.3, 0.9), (0.1, max_freq), (0, 6.3)))
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)
