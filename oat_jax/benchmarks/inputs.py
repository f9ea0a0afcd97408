"""Inputs of the timed functions: the benchmarked OATConfig and a normalizer fitted on random actions."""

from __future__ import annotations

import ml_collections
import numpy as np

from oat_jax.config import OATConfig
from oat_jax.normalizer import Normalizer


def oat_config(config: ml_collections.ConfigDict, action_dim: int, dtype: str) -> OATConfig:
    """The paper's OATConfig with `action_dim`, compute `dtype` and the benchmark's `config.model_overrides`."""
    return OATConfig(action_dim=action_dim, dtype=dtype, **config.model_overrides.to_dict())


def random_normalizer(rng: np.random.Generator, action_dim: int) -> Normalizer:
    """A 'limits' normalizer fitted on 1000 random actions (1000, action_dim) uniform in [-2, 2] (so the timed
    functions include the affine maps)."""
    return Normalizer.fit(rng.uniform(-2.0, 2.0, (1000, action_dim)).astype(np.float32))
