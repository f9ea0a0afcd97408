"""Policy training data: (observation history, action chunk) pairs of one RLDS dataset, in memory or streamed.

The data is one dataset or a weighted mixture (`config.data.path` = 'name_or_path:weight,...', as the tokenizer's),
each member with its own state (and, for the Diffusion Policy, action) normalizer. What a policy observes comes from
`config.data`: `state_keys` (zero or more fields, concatenated into "state"),
`image_keys` (zero or more cameras, stacked into "image"), `language_key` (the instruction, '' = none); at least one
state key or camera. The pairs come from `data_pipelines.pairs` (histories and chunks built per episode, each frame
stored once), in one of two ways behind one interface (`local_batch(step)`), chosen by `config.data.shuffle_buffer`:

- 0 (in memory): every train pair is read once into host arrays and tokenized once; the global batch of step s is
  a fixed function of (seed, s) (`PairBatches`), whatever the process count. For small datasets (memory grows with
  the dataset, every frame K times).
- > 0 (streamed): a shuffled, repeated tf.data pipeline over this process's episodes, images decoded (and
  optionally cropped, `config.data.crop_min_area`) in the pipeline, that many pairs in the shuffle buffer; memory is
  bounded by the buffers. A resumed run skips the pairs of the steps already taken before decoding anything, so it
  continues with exactly the pairs of an uninterrupted run.

Held-out pairs are an evenly spaced subset of at most `config.data.max_eval_chunks` validation pairs, read without
holding the rest. The state normalizer is fitted on the train split's frames (each frame once).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from data_pipelines import loader, pairs
from oat_jax.action_tokenizers import metrics
from oat_jax.normalizer import Normalizer
from oat_jax.training import data

_READ_BATCH = 256
EPISODE_SHUFFLE_BUFFER = 64  # episodes held for shuffling by the streamed pipeline


def observation_spec(data_cfg: ml_collections.ConfigDict) -> pairs.ObservationSpec:
    """The `ObservationSpec` of `config.data` (ValueError naming the fields when it observes nothing)."""
    return pairs.ObservationSpec(tuple(data_cfg.state_keys), tuple(data_cfg.image_keys),
                                 data_cfg.language_key or "")


def check_data_config(data_cfg: ml_collections.ConfigDict) -> None:
    """ValueError naming the field when `config.data` asks for something the policy trainers cannot feed."""
    if data_cfg.n_obs_steps < 1:
        raise ValueError(f"config.data.n_obs_steps must be >= 1, got {data_cfg.n_obs_steps}.")
    if int(data_cfg.shuffle_buffer) < 0:
        raise ValueError(f"config.data.shuffle_buffer must be 0 (in memory) or a buffer size > 0 (streamed), got "
                         f"{data_cfg.shuffle_buffer}.")
    if not 0.0 < float(data_cfg.crop_min_area) <= 1.0:
        raise ValueError(f"config.data.crop_min_area must be in (0, 1] (1 = no random crop), got "
                         f"{data_cfg.crop_min_area}.")
    if loader.is_mixture(data_cfg.path) and not data_cfg.shuffle_buffer:
        raise ValueError(f"config.data.path={data_cfg.path!r} is a mixture: its pairs are sampled by weight from "
                         f"streams; set config.data.shuffle_buffer > 0 (e.g. 10000).")
    observation_spec(data_cfg)


def observation_keys(data_cfg: ml_collections.ConfigDict) -> dict:
    """{"state": state keys joined by ',', "image": camera keys joined by ',', "language": the instruction key}
    (the entries the policy uses), recorded with a trained policy."""
    obs = observation_spec(data_cfg)
    keys = {"state": ",".join(obs.state_keys), "image": ",".join(obs.image_keys), "language": obs.language_key}
    return {k: v for k, v in keys.items() if v}


def _label(data_cfg: ml_collections.ConfigDict) -> str:
    """The dataset's path or name (a mixture's joined by ' + ') for messages."""
    return " + ".join(m.spec.label for m in data.dataset_members(data_cfg))


def member_labels(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """The labels of the data's members (one for a single dataset), in `dataset_index` order."""
    return [m.label for m in data.dataset_members(data_cfg)]


def _datasets(data_cfg: ml_collections.ConfigDict) -> list[tuple[loader.DatasetSpec, float]]:
    return [(m.spec, m.weight) for m in data.dataset_members(data_cfg)]


def fit_normalizers(data_cfg: ml_collections.ConfigDict, state_mode: str, action_mode: str | None = None
                    ) -> tuple[list[Normalizer] | None, list[Normalizer] | None]:
    """Per member (in `dataset_index` order): the state normalizers and the action normalizers, each fitted on every
    train frame of that member (each frame once); the state ones None without state keys, the action ones None
    without `action_mode`."""
    logging.info("Reading the train frames of %s (actions and states only) for the normalizers.", _label(data_cfg))
    frames = pairs.frame_values(_datasets(data_cfg), observation_spec(data_cfg), "train",
                                val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed)
    labels = member_labels(data_cfg)
    counts = np.bincount(frames.get("dataset_index", np.zeros(0, np.int32)), minlength=len(labels))
    if (counts == 0).any():
        raise ValueError(f"The 'train' split of {[lb for lb, c in zip(labels, counts) if c == 0]} holds no steps; "
                         f"check config.data.val_fraction.")
    _check_finite(frames, frames["episode_id"], data_cfg, "train")
    member = frames["dataset_index"]
    state = ([Normalizer.fit(frames["state"][member == i], state_mode) for i in range(len(labels))]
             if "state" in frames else None)
    actions = ([Normalizer.fit(frames["actions"][member == i], action_mode) for i in range(len(labels))]
               if action_mode else None)
    return state, actions


def instructions(data_cfg: ml_collections.ConfigDict) -> list[str]:
    """The distinct instructions of the train split (the policy's vocabulary); [] without a language key."""
    found = pairs.instruction_vocabulary(_datasets(data_cfg), observation_spec(data_cfg), "train",
                                         val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed)
    if data_cfg.language_key and not found:
        raise ValueError(f"config.data.language_key={data_cfg.language_key!r}: the train split of "
                         f"{_label(data_cfg)} holds no instruction (every one is empty); leave language_key "
                         f"empty for a policy without language input.")
    return found


def _check_finite(batch: dict, episode_ids: np.ndarray, data_cfg: ml_collections.ConfigDict, split: str) -> None:
    """ValueError naming the dataset (the mixture member of the first bad row), split and episodes when an action
    or state value is NaN/Inf."""
    for name in ("actions", "state"):
        if name not in batch:
            continue
        values = np.asarray(batch[name])
        bad = ~np.all(np.isfinite(values.reshape(len(values), -1)), axis=1)
        if bad.any():
            member = np.asarray(batch.get("dataset_index", np.zeros(len(values), np.int32)))
            first = int(member[bad][0])
            ids = np.unique(np.asarray(episode_ids)[bad & (member == first)])
            what = "actions" if name == "actions" else "state observations"
            spec = data.dataset_members(data_cfg)[first].spec
            raise ValueError(f"{spec.label} ({spec.path or spec.name}): episode(s) {ids[:10].tolist()} of the "
                             f"{split!r} split have NaN/Inf {what}; fix the source data and convert it again.")


def load_pairs(data_cfg: ml_collections.ConfigDict, split: str, horizon: int, n_obs_steps: int,
               vocabulary: tuple[str, ...] = (), keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The (observation history, chunk) pairs of `split` in dataset order, in host memory.

    Args:
      vocabulary: the instruction vocabulary (`instructions`) when config.data.language_key is set.
      keep: (num_pairs,) bool: only these pairs of the split (None: all).
    Returns:
      {"actions": (M, H, D_a) float32 raw, "dataset_index": (M,) int32, "state": (M, K, D_s) float32 raw (with
       state keys), "image": (M, K, cams, h, w, c) uint8 (with cameras), "language": (M,) int32 ids (with a
       language key)}.
    """
    ds = pairs.make_pair_dataset(_datasets(data_cfg), observation_spec(data_cfg), split=split, horizon=horizon,
                                 n_obs_steps=n_obs_steps, batch_size=_READ_BATCH, shuffle=False, repeat=False,
                                 val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed,
                                 instructions=vocabulary, keep=keep, drop_remainder=False)
    parts: dict[str, list] = {}
    for batch in ds.as_numpy_iterator():
        _check_finite(batch, batch["episode_id"], data_cfg, split)
        for name, value in batch.items():
            if name != "episode_id":
                parts.setdefault(name, []).append(value)
    if not parts:
        raise ValueError(f"The {split!r} split of {_label(data_cfg)} holds no pairs; check "
                         f"config.data.val_fraction.")
    return {name: np.concatenate(values) for name, values in parts.items()}


def eval_pairs(data_cfg: ml_collections.ConfigDict, horizon: int, n_obs_steps: int,
               vocabulary: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """At most config.data.max_eval_chunks validation pairs, evenly spaced over the split (`load_pairs` arrays);
    only those are decoded and held."""
    total = pairs.count_pairs(_datasets(data_cfg), "val", val_fraction=data_cfg.val_fraction,
                              split_seed=data_cfg.split_seed)
    if total == 0:
        raise ValueError(f"The 'val' split of {_label(data_cfg)} holds no pairs; check config.data.val_fraction.")
    limit = int(data_cfg.max_eval_chunks)
    logging.info("Reading %d of the %d held-out pairs of %s.", min(limit, total), total, _label(data_cfg))
    keep = np.zeros(total, bool)
    keep[np.unique(np.linspace(0, total - 1, min(limit, total)).round().astype(np.int64))] = True
    return load_pairs(data_cfg, "val", horizon, n_obs_steps, vocabulary, keep)


def observation_fields(arrays: dict) -> dict:
    """{"obs_dim", "num_cameras", "image_shape"} of a policy config from pairs' arrays (state (M, K, D_s), images
    (M, K, cams, h, w, c))."""
    out = {"obs_dim": int(arrays["state"].shape[-1]) if "state" in arrays else 0,
           "num_cameras": 0, "image_shape": ()}
    if "image" in arrays:
        out.update(num_cameras=int(arrays["image"].shape[2]), image_shape=tuple(arrays["image"].shape[3:]))
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


class StreamedPairs:
    """This process's batches from a shuffled, repeated pipeline over its episodes of the train split
    (`pairs.make_pair_dataset`); `finish` turns each raw batch into the step's arrays (normalization, targets).

    Args:
      local_batch: rows per process (global batch / process count).
      start_step: first step of this run: the pairs of the steps before it are skipped (exact resume).
      process_index / process_count: this process's episode shard.
    """

    def __init__(self, data_cfg: ml_collections.ConfigDict, horizon: int, n_obs_steps: int, local_batch: int,
                 seed: int, start_step: int, vocabulary: tuple[str, ...], finish: Callable[[dict], dict],
                 process_index: int = 0, process_count: int = 1):
        ds = pairs.make_pair_dataset(
            _datasets(data_cfg), observation_spec(data_cfg), split="train", horizon=horizon, n_obs_steps=n_obs_steps,
            batch_size=local_batch, shuffle=True, repeat=True, seed=seed, process_index=process_index,
            process_count=process_count, val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed,
            shuffle_buffer=int(data_cfg.shuffle_buffer), episode_shuffle_buffer=EPISODE_SHUFFLE_BUFFER,
            instructions=vocabulary, crop_min_area=float(data_cfg.crop_min_area), skip=start_step * local_batch)
        self._it, self._finish, self._data_cfg = ds.as_numpy_iterator(), finish, data_cfg

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """The next batch of this process, finished (`step` is only for the interface: the stream is in order)."""
        del step
        batch = next(self._it)
        _check_finite(batch, batch["episode_id"], self._data_cfg, "train")
        return self._finish({k: v for k, v in batch.items() if k != "episode_id"})


def train_batches(data_cfg: ml_collections.ConfigDict, horizon: int, n_obs_steps: int, global_batch: int,
                  rows: np.ndarray, seed: int, start_step: int, vocabulary: tuple[str, ...],
                  finish_streamed: Callable[[dict], dict], finish_in_memory: Callable[[dict], dict],
                  process_index: int = 0, process_count: int = 1):
    """The train batches of `config.data.shuffle_buffer` (0: `PairBatches` over the train pairs finished once by
    `finish_in_memory`; > 0: `StreamedPairs` finishing each batch with `finish_streamed`) and the number of train
    pairs."""
    if not data_cfg.shuffle_buffer:
        arrays = finish_in_memory(load_pairs(data_cfg, "train", horizon, n_obs_steps, vocabulary))
        return PairBatches(arrays, global_batch, rows, seed), len(next(iter(arrays.values())))
    total = pairs.count_pairs(_datasets(data_cfg), "train", val_fraction=data_cfg.val_fraction,
                              split_seed=data_cfg.split_seed)
    streamed = StreamedPairs(data_cfg, horizon, n_obs_steps, len(rows), seed, start_step, vocabulary,
                             finish_streamed, process_index, process_count)
    return streamed, total


def check_action_steps(config: ml_collections.ConfigDict, horizon: int, what: str) -> None:
    """ValueError unless config.policy.n_action_steps is in 1..horizon (`what` names the horizon's source)."""
    if not 1 <= int(config.policy.n_action_steps) <= horizon:
        raise ValueError(f"config.policy.n_action_steps={config.policy.n_action_steps} must be in 1..{horizon} "
                         f"({what}).")


def by_member(values: np.ndarray, member: np.ndarray, normalizers: Sequence[Normalizer]) -> np.ndarray:
    """Each row of `values` (B, ..., D) normalized with the normalizer of its member `member` (B,) int: float32."""
    if len(normalizers) == 1:
        return np.asarray(normalizers[0].normalize(values), np.float32)
    return data.normalize_rows(values, member, normalizers)


def observations(batch: dict, normalizers: Sequence[Normalizer] | None) -> dict:
    """The observation entries of a raw batch for the step: "state" normalized with its member's normalizer
    (float32), "image" and "language" as read."""
    out = {k: batch[k] for k in ("image", "language") if k in batch}
    if "state" in batch:
        out["state"] = by_member(batch["state"], batch["dataset_index"], normalizers)
    return out


def tokenizer_units(tokenizer, labels: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`convert(actions (B, H, D_a) raw, member (B,)) -> (B, H, D_a)`: each member's raw actions in the units the
    tokenizer's own normalizer reads. A tokenizer trained on a mixture (OAT) normalizes each dataset with its own
    statistics; its rows are mapped through that dataset's normalizer and back through the default one, so one
    tokenize call (on the host or on the device) gives every row the targets of its dataset. Other tokenizers read
    every member in shared raw units (identity)."""
    own = dict(getattr(tokenizer, "dataset_normalizers", {}) or {})
    if not own or (len(labels) == 1 and labels[0] not in own):
        return lambda actions, member: actions
    missing = [label for label in labels if label not in own]
    if missing:
        raise ValueError(f"config.data.path mixes {list(labels)}, but the tokenizer (config.tokenizer.path) was "
                         f"trained on {sorted(own)}: it has no normalizer for {missing}. Train the policy on the "
                         f"tokenizer's datasets, or a tokenizer on the policy's mixture.")
    default, members = tokenizer.normalizer, [own[label] for label in labels]

    def convert(actions: np.ndarray, member: np.ndarray) -> np.ndarray:
        normalized = by_member(actions, member, members)
        return np.asarray(default.unnormalize(normalized), np.float32)

    return convert


def token_feeds(tokenizer, normalizers: Sequence[Normalizer] | None, labels: Sequence[str]
                ) -> tuple[Callable, Callable, Callable | None, Any]:
    """How raw pairs become a token policy's step batches: (on_host, streamed, targets, frozen).

    on_host(pairs) -> observations for the step + "tokens" / "lengths" tokenized on the host (in-memory pairs,
    held-out pairs); streamed(batch) -> observations + the raw "actions" that the step tokenizes on the device with
    `targets(frozen, actions)` (the tokenizer's `device_tokenizer()`), or `on_host` for a tokenizer without one
    (targets and frozen None). The chunks of a mixture's members are first put in the tokenizer's units
    (`tokenizer_units`)."""
    units = tokenizer_units(tokenizer, labels)

    def on_host(batch: dict) -> dict:
        tokens, lengths = tokenize_all(tokenizer, units(batch["actions"], batch["dataset_index"]))
        return {**observations(batch, normalizers), "tokens": tokens, "lengths": lengths}

    targets, frozen = tokenizer.device_tokenizer() if hasattr(tokenizer, "device_tokenizer") else (None, None)

    def streamed(batch: dict) -> dict:
        if targets is None:
            return on_host(batch)
        return {**observations(batch, normalizers), "actions": units(batch["actions"], batch["dataset_index"])}

    return on_host, streamed, targets, frozen



def member_normalizers(labels: Sequence[str], state: Sequence[Normalizer] | None,
                       action: Sequence[Normalizer] | None = None) -> dict[str, dict[str, Normalizer]]:
    """{label: {"state": ..., "action": ...}} of a mixture's members, saved with the policy (`act(dataset=label)`);
    {} for one dataset (its normalizers are the policy's own)."""
    if len(labels) < 2:
        return {}
    out: dict[str, dict[str, Normalizer]] = {label: {} for label in labels}
    for key, normalizers in (("state", state), ("action", action)):
        for label, normalizer in zip(labels, normalizers or ()):
            out[label][key] = normalizer
    return out


def saved_normalizers(meta: dict, labels: Sequence[str], key: str) -> list[Normalizer] | None:
    """The per-member "state" or "action" normalizers a resumed run's policy item holds (None: the policy has none
    of that kind); ValueError when it was trained on other datasets."""
    if len(labels) > 1:
        saved = meta.get("datasets", {})
        if sorted(saved) != sorted(labels):
            raise ValueError(f"The run was started on the datasets {sorted(saved) or 'of one dataset'}, not "
                             f"{list(labels)}: resume with the config.data.path it was started with.")
        if key not in saved[labels[0]]:
            return None
        return [Normalizer.from_dict(saved[label][key]) for label in labels]
    entry = meta["obs_normalizers"].get("state") if key == "state" else meta.get("action_normalizer")
    return None if entry is None else [Normalizer.from_dict(entry)]
