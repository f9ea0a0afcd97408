"""Policy training data: (observation history, action chunk) pairs in memory, tokenized once by a frozen tokenizer.

Tokenization is deterministic (the tokenizer is frozen and has no dropout at inference), so the token targets of
every chunk are computed once up front instead of in every step; batches then index the in-memory arrays with
the same seeded epoch permutations as the tokenizer trainer (`data.InMemoryBatches`), so a resumed run replays
exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from data_pipelines import loader
from oat_jax.action_tokenizers import metrics
from oat_jax.training import data

_READ_BATCH = 1024


def policy_spec(data_cfg: ml_collections.ConfigDict) -> loader.DatasetSpec:
    """`DatasetSpec` of `config.data` reading the observation keys `config.data.obs_keys`."""
    return dataclasses.replace(data.dataset_spec(data_cfg), obs_keys=tuple(data_cfg.obs_keys))


def image_keys(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Step key paths of the camera images of `config.data.image_keys` (camera order; () = no images)."""
    keys = getattr(data_cfg, "image_keys", ()) or ()
    return (keys,) if isinstance(keys, str) else tuple(keys)


def load_pairs(spec: loader.DatasetSpec, data_cfg: ml_collections.ConfigDict, split: str, horizon: int,
               n_obs_steps: int) -> dict[str, np.ndarray]:
    """Every (observation history, chunk) pair of `split` in dataset order.

    The observations are the step keys `spec.obs_keys` plus the cameras `config.data.image_keys` (e.g.
    ("observation/image",)); each history holds the K frames up to the chunk's first step, the first frame of the
    episode repeated at its start (the same for states and images).

    Returns:
      {"actions": (M, H, D_a) float32 raw,
       "<obs name>": (M, K, ...) for each key of spec.obs_keys (named by its last path component, e.g. "state":
         (M, K, 39) float32),
       "image": (M, K, cams, h, w, c) uint8, cameras in image_keys order (only when image_keys is non-empty; the
         cameras must share one image shape)}.
    """
    cameras = image_keys(data_cfg)
    names = [path.split("/")[-1] for path in cameras]
    if cameras:
        if len(set(names)) != len(names) or (set(names) & {p.split("/")[-1] for p in spec.obs_keys}):
            raise ValueError(f"config.data.image_keys={cameras} and obs_keys={tuple(spec.obs_keys)}: every key "
                             "needs a distinct last path component (observations are named by it).")
        spec = dataclasses.replace(spec, obs_keys=tuple(spec.obs_keys) + cameras)
    ds = loader.make_chunk_dataset(spec, split=split, horizon=horizon, batch_size=_READ_BATCH, shuffle=False,
                                   repeat=False, seed=0, val_fraction=data_cfg.val_fraction,
                                   split_seed=data_cfg.split_seed, process_index=0, process_count=1,
                                   n_obs_steps=n_obs_steps, drop_remainder=False, decode_images=bool(cameras),
                                   with_episode_ids=True)
    parts: dict[str, list] = {}
    episodes = []
    for batch in ds.as_numpy_iterator():
        episodes.append(np.asarray(batch["episode_id"]))
        parts.setdefault("actions", []).append(np.asarray(batch["actions"], np.float32))
        observation = batch.get("observation", {})
        for name, value in observation.items():
            if name not in names:
                parts.setdefault(name, []).append(np.asarray(value))
        if cameras:  # {name: (B, K, h, w, c)} -> (B, K, cams, h, w, c), decoded per batch to bound the memory
            shapes = {name: observation[name].shape[2:] for name in names}
            if len(set(shapes.values())) != 1:
                raise ValueError(f"config.data.image_keys: the cameras differ in image shape {shapes}; resize them "
                                 "to one (h, w, c) when writing the dataset.")
            parts.setdefault("image", []).append(
                np.stack([np.asarray(observation[name], np.uint8) for name in names], axis=2))
    if not parts:
        raise ValueError(f"The {split!r} split of {spec.label} holds no chunks; check config.data.val_fraction.")
    out = {k: np.concatenate(v) for k, v in parts.items()}
    for name in out:
        if name != "actions" and out[name].dtype.kind == "f":
            out[name] = out[name].astype(np.float32)
        if out[name].dtype.kind == "f":
            bad = ~np.all(np.isfinite(out[name].reshape(len(out[name]), -1)), axis=1)
            if bad.any():
                ids = np.unique(np.concatenate(episodes)[bad])
                what = "actions" if name == "actions" else f"observation {name!r}"
                raise ValueError(f"{spec.label} ({spec.path or spec.name}): {len(ids)} episode(s) of the {split!r} "
                                 f"split have NaN/Inf in their {what} (episode ids {ids[:10].tolist()}); fix the "
                                 f"source data and convert it again.")
    return out


def tokenize_all(tokenizer, actions: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Targets of every chunk: tokens (M, max_tokens) int32 (PAD_ID-padded), lengths (M,) int32."""
    tokens, lengths = [], []
    for start in range(0, len(actions), batch):
        t, n = tokenizer.tokenize(actions[start:start + batch])
        tokens.append(np.asarray(t, np.int32))
        lengths.append(np.asarray(n, np.int32))
    tokens, lengths = np.concatenate(tokens), np.concatenate(lengths)
    if lengths.min() < 1:
        raise ValueError(f"The tokenizer produced {int(np.sum(lengths < 1))} empty token sequences; a policy "
                         f"cannot learn to emit them. Check the tokenizer ({tokenizer.name}).")
    return tokens, lengths


def token_statistics(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Summary of the targets: mean/max length, distinct ids used, and the per-position entropy (nats) of the first
    positions (how predictable each position is; evidence when comparing tokenizers).

    Args:
      tokens: (M, max_tokens) int32 PAD-padded; lengths: (M,) int32; vocab_size: V.
    Returns:
      {"mean_length", "max_length", "distinct_ids", "vocab_size", "entropy_pos{p}" for the positions p < 8 that some
       sequence reaches} floats; the entropy is `metrics.entropy_bits` of `metrics.position_counts` in nats.
    """
    counts = metrics.position_counts(tokens, lengths, vocab_size)
    stats = {"mean_length": float(lengths.mean()), "max_length": float(lengths.max()),
             "distinct_ids": float(np.count_nonzero(counts.sum(axis=0))), "vocab_size": float(vocab_size)}
    for pos, bits in enumerate(metrics.entropy_bits(counts[:8])):
        if not np.isnan(bits):
            stats[f"entropy_pos{pos}"] = float(bits * np.log(2.0))
    return stats


class PairBatches:
    """Global batch of step s over in-memory arrays (`data.EpochOrder`, the tokenizer's order of one dataset); this
    process keeps `rows` of it.

    Args:
      arrays: {name: (M, ...)} with equal M (tokens, lengths, normalized observations).
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, rows: np.ndarray, seed: int):
        self.arrays = arrays
        size = len(next(iter(arrays.values())))
        self._order = data.EpochOrder(size, global_batch, rows, seed)

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """{name: (b, ...)}: this process's rows of the global batch of `step`."""
        idx = self._order.indices(step)
        return {k: v[idx] for k, v in self.arrays.items()}


def check_data_config(data_cfg: ml_collections.ConfigDict) -> None:
    """ValueError naming the field when `config.data` asks for observations the policy trainers cannot feed."""
    if data_cfg.n_obs_steps < 1:
        raise ValueError(f"config.data.n_obs_steps must be >= 1, got {data_cfg.n_obs_steps}.")
    if [k.split("/")[-1] for k in data_cfg.obs_keys] != ["state"]:
        raise ValueError(f"config.data.obs_keys={tuple(data_cfg.obs_keys)}: the trainer feeds state vectors; "
                         f"give one key whose last component is 'state' (e.g. 'observation/state').")


def camera_fields(pairs: dict) -> dict:
    """{"num_cameras", "image_shape"} of a policy config from pairs' images (M, K, cams, h, w, c) (none: 0, ())."""
    if "image" not in pairs:
        return {"num_cameras": 0, "image_shape": ()}
    return {"num_cameras": int(pairs["image"].shape[2]), "image_shape": tuple(pairs["image"].shape[3:])}


def observation_keys(data_cfg: ml_collections.ConfigDict) -> dict:
    """{"state": its step key, "image": the camera step keys joined by ','} recorded with a trained policy."""
    keys = {"state": data_cfg.obs_keys[0]}
    if image_keys(data_cfg):
        keys["image"] = ",".join(image_keys(data_cfg))
    return keys


def check_action_steps(config: ml_collections.ConfigDict, horizon: int, what: str) -> None:
    """ValueError unless config.policy.n_action_steps is in 1..horizon (`what` names the horizon's source)."""
    if not 1 <= int(config.policy.n_action_steps) <= horizon:
        raise ValueError(f"config.policy.n_action_steps={config.policy.n_action_steps} must be in 1..{horizon} "
                         f"({what}).")
