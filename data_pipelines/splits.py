"""Episode-level train/validation split and per-process sharding (pure numpy, jax-free).

Both the loader and the statistics use these functions, so "train" always means the same episodes. The split
depends only on the number of episodes, `val_fraction` and `split_seed` (a SHA-256 rank of each episode index),
never on the numpy version, the process or the run.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("train", "val", "all")


def _episode_score(split_seed: int, episode_index: int) -> int:
    digest = hashlib.sha256(f"{split_seed}/{episode_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def num_val_episodes(num_episodes: int, val_fraction: float) -> int:
    """How many of `num_episodes` episodes are held out: round(val_fraction * n), at least 1 when
    val_fraction > 0 and n >= 2, and never all of them."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1); use 0.0 to train on every episode.")
    if val_fraction == 0.0 or num_episodes < 2:
        return 0
    return int(min(max(1, round(val_fraction * num_episodes)), num_episodes - 1))


def split_episode_ids(num_episodes: int, split: str, val_fraction: float = 0.1, split_seed: int = 0) -> np.ndarray:
    """Sorted episode indices (int64, shape (n,)) that belong to `split`.

    Episodes are ranked by SHA-256 of (split_seed, index); the `num_val_episodes` lowest ranks are "val", the rest
    "train"; "all" is every episode. The result is identical in every process and every run.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}.")
    all_ids = np.arange(num_episodes, dtype=np.int64)
    if split == "all":
        return all_ids
    n_val = num_val_episodes(num_episodes, val_fraction)
    scores = np.array([_episode_score(split_seed, i) for i in range(num_episodes)], dtype=np.uint64)
    order = np.argsort(scores, kind="stable")  # (num_episodes,) lowest score first
    is_val = np.zeros(num_episodes, dtype=bool)
    is_val[order[:n_val]] = True
    ids = all_ids[is_val] if split == "val" else all_ids[~is_val]
    if ids.size == 0:
        raise ValueError(
            f"split={split!r} of a dataset with {num_episodes} episodes and val_fraction={val_fraction} is empty; "
            "use split='all' or a dataset with more episodes.")
    return ids


def shard_episode_ids(episode_ids: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """The contiguous block of `episode_ids` (n,) that process `process_index` of `process_count` reads.

    Blocks are disjoint, their union is `episode_ids`, sizes differ by at most one. Contiguous blocks let each
    process read only its own range of the underlying files.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
    if len(episode_ids) < process_count:
        raise ValueError(
            f"{len(episode_ids)} episodes cannot be shared by {process_count} processes (each needs at least one); "
            "use a larger split (lower val_fraction or split='all') or fewer processes.")
    bounds = np.arange(process_count + 1, dtype=np.int64) * len(episode_ids) // process_count  # (P + 1,)
    return np.asarray(episode_ids)[bounds[process_index]:bounds[process_index + 1]]
