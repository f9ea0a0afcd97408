"""Raw observations -> the inputs of a policy network (shared by the token and the diffusion policy)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from oat_jax.normalizer import Normalizer


def prepare_observation(config: Any, obs_normalizers: Mapping[str, Normalizer],
                        obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw observation dict -> model input, checking shapes against `config` (a PolicyConfig or DiffusionConfig:
    obs_dim, n_obs_steps, num_cameras, image_shape).

    Args:
      obs: {"state": (B, K, obs_dim) float raw units, "image": (B, K, cams, h, w, c) uint8} (the entries the
        config uses).
    Returns:
      {"state": (B, K, obs_dim) float32 normalized with obs_normalizers["state"] (when present), "image": uint8
      as given (scaled inside the model)}. Raises ValueError naming the expected shape.
    """
    out = {}
    if config.obs_dim:
        state = np.asarray(obs["state"], np.float32)
        if state.ndim != 3 or state.shape[1:] != (config.n_obs_steps, config.obs_dim):
            raise ValueError(f"obs['state'] must have shape (B, {config.n_obs_steps}, {config.obs_dim}) = (batch, "
                             f"n_obs_steps, obs_dim), got {state.shape}.")
        norm = obs_normalizers.get("state")
        out["state"] = norm.normalize(state) if norm is not None else state
    if config.num_cameras:
        image = np.asarray(obs["image"])
        expected = (config.n_obs_steps, config.num_cameras) + tuple(config.image_shape)
        if image.ndim != 6 or image.shape[1:] != expected:
            raise ValueError(f"obs['image'] must have shape (B,) + {expected}, got {image.shape}.")
        out["image"] = image
    return out
