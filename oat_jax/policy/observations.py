"""Raw observations -> the inputs of a policy network (shared by the token and the diffusion policy)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from oat_jax.normalizer import Normalizer


def check_instructions(config: Any, instructions: Sequence[str]) -> tuple[str, ...]:
    """The instruction vocabulary of a policy as a tuple; ValueError unless it has config.num_instructions
    distinct entries (a policy.json whose list and config disagree fails when it loads)."""
    instructions = tuple(str(s) for s in instructions)
    if len(instructions) != config.num_instructions or len(set(instructions)) != len(instructions):
        raise ValueError(f"The policy was trained on {config.num_instructions} instructions, but its instruction "
                         f"list has {len(instructions)} ({len(set(instructions))} distinct): its policy.json is "
                         f"inconsistent.")
    return instructions


def instruction_ids(instructions: Sequence[str], language: Any, batch: int) -> np.ndarray:
    """obs["language"] ((B,) strings, or one string for every row) -> (B,) int32 ids: i + 1 for instructions[i].
    ValueError naming an instruction the policy was not trained on (its learned embedding would be untrained)."""
    if isinstance(language, (str, bytes)):
        language = [language] * batch
    texts = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in np.asarray(language, object).ravel()]
    if len(texts) != batch:
        raise ValueError(f"obs['language'] must hold one instruction per row ({batch}), got {len(texts)}.")
    index = {s: i + 1 for i, s in enumerate(instructions)}
    unknown = sorted({s for s in texts if s not in index})
    if unknown:
        raise ValueError(f"obs['language'] holds instruction(s) {unknown[:3]} the policy was not trained on; it "
                         f"knows {len(instructions)}: {list(instructions[:5])}{' ...' if len(instructions) > 5 else ''}"
                         f" (policy.instructions).")
    return np.asarray([index[s] for s in texts], np.int32)


def prepare_observation(config: Any, obs_normalizers: Mapping[str, Normalizer], obs: Mapping[str, np.ndarray],
                        instructions: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Raw observation dict -> model input, checking shapes against `config` (a PolicyConfig or DiffusionConfig:
    obs_dim, n_obs_steps, num_cameras, image_shape, num_instructions).

    Args:
      obs: {"state": (B, K, obs_dim) float raw units, "image": (B, K, cams, h, w, c) uint8, "language": (B,)
        instruction strings (or one string)} (the entries the config uses).
      instructions: the policy's instruction vocabulary (for "language").
    Returns:
      {"state": (B, K, obs_dim) float32 normalized with obs_normalizers["state"] (when present), "image": uint8
      as given (scaled inside the model), "language": (B,) int32 ids}. Raises ValueError naming the expected shape.
    """
    if not isinstance(obs, Mapping):
        image = ", 'image': (B, K, cams, h, w, c) uint8" if config.num_cameras else ""
        raise TypeError(f"obs must be a dict {{'state': (B, K, obs_dim) array{image}}}, got {type(obs).__name__}.")
    needed = ((["state"] if config.obs_dim else []) + (["image"] if config.num_cameras else [])
              + (["language"] if getattr(config, "num_instructions", 0) else []))
    missing = [k for k in needed if k not in obs]
    if missing:
        raise ValueError(f"obs has no {missing} entry (it has {sorted(obs)}); this policy reads {needed}.")
    out = {}
    if config.obs_dim:
        try:
            state = np.asarray(obs["state"], np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"obs['state'] must be a numeric (B, {config.n_obs_steps}, {config.obs_dim}) array: "
                             f"{e}") from e
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
        if image.dtype != np.uint8:
            raise ValueError(f"obs['image'] must be uint8 (0..255 pixels), got {image.dtype}.")
        out["image"] = image
    if "language" in needed:
        batch = len(next(iter(out.values())))  # the state's or the images' rows (a policy has one of them)
        out["language"] = instruction_ids(instructions, obs["language"], batch)
    return out


def check_normalizers(config: Any, obs_normalizers: Mapping[str, Normalizer]) -> None:
    """ValueError when the state normalizer's size is not the config's obs_dim (a policy.json whose normalizer
    and config disagree fails when it loads, not at the first act())."""
    norm = obs_normalizers.get("state")
    if config.obs_dim and norm is not None and norm.action_dim != config.obs_dim:
        raise ValueError(f"The state normalizer has {norm.action_dim} dimensions but the policy config's obs_dim is "
                         f"{config.obs_dim}: its policy.json is inconsistent (edited, or assembled from two "
                         f"policies).")


def finite_rows(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(B,) bool: True where every value of the row's state history is finite. A policy gives the other rows a NaN
    chunk and valid False: a corrupted sensor reading never becomes a confident action."""
    state = np.asarray(obs["state"], np.float32) if "state" in obs else None
    if state is None:
        return np.ones((len(obs["image"]),), bool)
    return np.all(np.isfinite(state.reshape(state.shape[0], -1)), axis=1)


def mask_rows(actions: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(actions (B, H, D_a) float32 with NaN in the rows that are not `valid`, valid (B,) bool)."""
    actions = np.array(actions, np.float32, copy=True)
    actions[~valid] = np.nan
    return actions, valid
