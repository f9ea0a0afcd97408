"""Training and evaluation data on top of `data_pipelines` (train/val split by episode, chunks of H steps).

The training data is one dataset or a weighted mixture (`dataset_members`; one dataset is a mixture of one), each
member normalized on the host with its own statistics' normalizer. Two ways to feed the train step, both yielding
this process's rows of the global batch (`train_batches`):
- in memory (`config.data.shuffle_buffer` = 0, default): every train chunk is loaded once into numpy arrays; the global
  batch of step s is a fixed function of (seed, s) (one dataset: epoch-wise permutations), and each process takes
  its rows. Resuming at step s therefore replays exactly the batches of an uninterrupted run, whatever the process
  count.
- streaming (`shuffle_buffer` > 0): `loader.make_chunk_dataset` with this process's episode shard, shuffled
  through a buffer of that many chunks and repeated, re-seeded from
  the start step on resume (statistically, not bitwise, equivalent to an uninterrupted run). For datasets that do
  not fit in host memory.
Evaluation always uses an in-memory, evenly spaced subset of the validation chunks, identical on every process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from data_pipelines import EMBEDDED_DATASET_DIR, EMBEDDED_DATASETS, loader, oxe, rlds_reader, statistics
from oat_jax.eval.subsets import evenly_spaced
from oat_jax.normalizer import Normalizer

_READ_BATCH = 1024
MAX_ACTION = 1e18  # larger action values are corrupt data: their squares overflow float32


@dataclasses.dataclass(frozen=True)
class Member:
    """One dataset of the training data: its label (metrics, per-dataset statistics), spec and sampling weight."""

    label: str
    spec: loader.DatasetSpec
    weight: float = 1.0


def dataset_members(data_cfg: ml_collections.ConfigDict) -> list[Member]:
    """The training datasets of `config.data`: the members of a mixture in `path` ('name_or_path:weight,...'),
    else the one dataset of `dataset_spec` (a mixture of one). Raises ValueError (naming the flags) for a mixture
    given with a name, and for members whose actions have different sizes."""
    mixture = data_cfg.path or ""
    if not loader.is_mixture(mixture):
        spec = dataset_spec(data_cfg)
        return [Member(loader.dataset_label(spec), spec)]
    if data_cfg.name:
        raise ValueError("config.data.path holds a mixture (members 'name_or_path:weight,...', names read from "
                         "config.data.data_dir); leave config.data.name empty.")
    specs = [dataclasses.replace(spec, source_split=getattr(data_cfg, "source_split", "train") or "train")
             for spec in loader.parse_mixture(mixture, data_cfg.data_dir or None,
                                              getattr(data_cfg, "action_keys", ""))]
    members = [Member(loader.dataset_label(spec), spec, spec.weight) for spec in specs]
    dims = {}
    for m in members:
        steps = rlds_reader.open_builder(m.spec).info.features["steps"].feature
        full = rlds_reader.composed_action_dim(m.spec, steps)
        dims[m.label] = len(m.spec.action_dims) if m.spec.action_dims is not None else full
    if len(set(dims.values())) > 1:
        raise ValueError(f"config.data.path: the mixture members' actions differ in size {dims}; a tokenizer has one "
                         f"action size. Choose fields of equal total size with --config.data.action_keys (members "
                         f"without a registered layout) or mix datasets of one action layout.")
    return members


def member_statistics(members: Sequence[Member], data_cfg: ml_collections.ConfigDict) -> dict:
    """Train-split statistics of the training data (JSON-able): one dataset's `train_statistics`; for a mixture
    the first member's at the top level (its normalizer is the tokenizer's default) and every member's under
    "datasets" {label: statistics}."""
    if len(members) == 1:
        return train_statistics(members[0].spec, data_cfg)
    per_member = {m.label: train_statistics(m.spec, data_cfg) for m in members}
    return {**per_member[members[0].label], "datasets": per_member}


def member_normalizers(stats: dict, members: Sequence[Member], mode: str) -> dict[str, Normalizer]:
    """{label: normalizer} of a mixture's members from `member_statistics` output; raises ValueError when the
    statistics (e.g. restored from a checkpoint) do not cover the configured members."""
    saved = stats.get("datasets", {})
    missing = [m.label for m in members if m.label not in saved]
    if missing:
        raise ValueError(f"The run's dataset statistics hold no entry for mixture member(s) {missing} (they have "
                         f"{sorted(saved)}); resume with the mixture the run was started with, or use a new workdir.")
    return {m.label: Normalizer.from_stats(saved[m.label]["action"], mode) for m in members}


def normalize_rows(actions: np.ndarray, member: np.ndarray, normalizers: Sequence[Normalizer]) -> np.ndarray:
    """Each row of raw `actions` (B, H, D_a) normalized with the normalizer of its dataset `member` (B,) int:
    float32 (B, H, D_a), numerically `normalizers[i].normalize` row by row."""
    out = np.empty(actions.shape, np.float32)
    for i, normalizer in enumerate(normalizers):
        sel = member == i
        if sel.any():
            out[sel] = normalizer.normalize(actions[sel])
    return out


def dataset_spec(data_cfg: ml_collections.ConfigDict) -> loader.DatasetSpec:
    """`loader.DatasetSpec` for `config.data` (path, or name + data_dir; neither = the embedded Meta-World)."""
    if data_cfg.path and data_cfg.name:
        raise ValueError("config.data: set either path (a builder directory) or name (+ data_dir), not both.")
    if loader.is_mixture(data_cfg.path):
        raise ValueError(f"config.data.path={data_cfg.path!r} is a mixture; this run reads one dataset (a policy "
                         f"trains on one dataset): give one builder directory.")
    if data_cfg.path is None and not data_cfg.name:  # a config that needs a dataset (:paper) sets path None
        raise ValueError("This config needs a dataset: add --config.data.path=RLDS_BUILDER_DIR, or "
                         "--config.data.name=NAME --config.data.data_dir=TFDS_DATA_DIR.")
    keys, split = getattr(data_cfg, "action_keys", ""), getattr(data_cfg, "source_split", "train") or "train"
    if data_cfg.name:  # a registered Open X-Embodiment name brings its action fields (data_pipelines.oxe)
        return oxe.spec_for(data_cfg.name, data_cfg.data_dir or None, action_keys=keys, source_split=split)
    return loader.DatasetSpec(path=data_cfg.path or EMBEDDED_DATASET_DIR, action_keys=keys, source_split=split)


def train_statistics(spec: loader.DatasetSpec, data_cfg: ml_collections.ConfigDict) -> dict:
    """Statistics of the train split only (the normalizer is fitted on them; JSON-able dict)."""
    return statistics.get_dataset_statistics(spec, split="train", val_fraction=data_cfg.val_fraction,
                                             split_seed=data_cfg.split_seed)


def load_chunks(spec: loader.DatasetSpec, data_cfg: ml_collections.ConfigDict, split: str,
                horizon: int) -> np.ndarray:
    """Every chunk of `split` in dataset order: (M, H, D_a) float32, raw units (all episodes, any process).

    Raises ValueError naming the dataset, split and episodes when an action is NaN/Inf (held-out episodes are
    validated like training episodes: a NaN there would make every held-out metric NaN)."""
    ds = loader.make_chunk_dataset(spec, split=split, horizon=horizon, batch_size=_READ_BATCH, shuffle=False,
                                   repeat=False, seed=0, val_fraction=data_cfg.val_fraction,
                                   split_seed=data_cfg.split_seed, process_index=0, process_count=1,
                                   drop_remainder=False, with_episode_ids=True)
    parts, episodes = [], []
    for b in ds.as_numpy_iterator():
        parts.append(np.asarray(b["actions"], np.float32))
        episodes.append(np.asarray(b["episode_id"]))
    if not parts:
        raise ValueError(f"The {split!r} split of {spec.label} holds no chunks; check config.data.val_fraction.")
    chunks = np.concatenate(parts)
    bad = ~np.all(np.isfinite(chunks), axis=(1, 2))
    if bad.any():
        ids = np.unique(np.concatenate(episodes)[bad])
        raise ValueError(f"{spec.label} ({spec.path or spec.name}): {len(ids)} episode(s) of the {split!r} split "
                         f"have NaN/Inf actions (episode ids {ids[:10].tolist()}); fix the source data and re-convert "
                         f"it, or choose another split with config.data.split_seed / val_fraction.")
    huge = np.max(np.abs(chunks), axis=(1, 2)) > MAX_ACTION
    if huge.any():
        ids = np.unique(np.concatenate(episodes)[huge])
        raise ValueError(f"{spec.label} ({spec.path or spec.name}): {len(ids)} episode(s) of the {split!r} split "
                         f"have actions of magnitude up to {float(np.max(np.abs(chunks))):.3g} (episode ids "
                         f"{ids[:10].tolist()}), beyond {MAX_ACTION:.0e}: their squared errors overflow float32. "
                         f"Fix or rescale the source data.")
    return chunks


EVAL_CHUNKS = 4096  # a tokenizer's held-out MSE is measured on at most this many chunks per dataset


def eval_chunks(spec: loader.DatasetSpec, data_cfg: ml_collections.ConfigDict, horizon: int,
                limit: int = EVAL_CHUNKS) -> np.ndarray:
    """At most `limit` validation chunks, evenly spaced over the split: (M, H, D_a) float32."""
    return evenly_spaced(load_chunks(spec, data_cfg, "val", horizon), int(limit))


def eval_dataset_specs(entries: str, flag: str = "config.data.eval_datasets") -> dict[str, loader.DatasetSpec]:
    """Parses a comma-separated list of extra evaluation datasets into {label: spec}.

    Each entry is `label=DIR`, `DIR` (label: the directory's base name) or the name of an embedded dataset
    (`data_pipelines.EMBEDDED_DATASETS`, e.g. 'metaworld_heldout'); DIR is an RLDS builder directory. Raises
    ValueError naming `flag` for a missing directory or a repeated label.
    """
    specs: dict[str, loader.DatasetSpec] = {}
    for entry in (e.strip() for e in (entries or "").split(",")):
        if not entry:
            continue
        label, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = EMBEDDED_DATASETS.get(path, path)
        label = label or os.path.basename(os.path.normpath(path))
        if not os.path.isfile(os.path.join(path, "dataset_info.json")) and "://" not in path:
            raise ValueError(f"{flag}: {entry!r} is neither an RLDS builder directory (no dataset_info.json in "
                             f"{os.path.abspath(path)}) nor an embedded dataset ({sorted(EMBEDDED_DATASETS)}).")
        if label in specs or label == "val":
            raise ValueError(f"{flag}: the label {label!r} is used twice; name the entries as label=DIR.")
        specs[label] = loader.DatasetSpec(path=path)
    return specs


def extra_eval_chunks(data_cfg: ml_collections.ConfigDict, horizon: int, flag: str = "config.data.eval_datasets",
                      limit: int = EVAL_CHUNKS) -> dict[str, np.ndarray]:
    """{label: (M, H, D_a) float32 chunks} of every episode of each `config.data.eval_datasets` entry (at most
    `limit` per dataset, evenly spaced): data the model never trains on, e.g. unseen tasks.

    'auto' means the embedded unseen-task set ('metaworld_heldout') when training on the embedded Meta-World MT10
    dataset (config.data.path and name empty), and nothing otherwise. Errors name `flag`.
    """
    entries = getattr(data_cfg, "eval_datasets", "")
    if entries == "auto":
        embedded = not (data_cfg.path or data_cfg.name)
        entries = "metaworld_heldout" if embedded else ""
    return {label: evenly_spaced(load_chunks(spec, data_cfg, "all", horizon), int(limit))
            for label, spec in eval_dataset_specs(entries, flag).items()}


class EpochOrder:
    """Global row order of step s over M items: positions s*B .. s*B+B-1 of an endless sequence of seeded
    permutations (every item once per epoch); this process keeps `rows`.

    Args:
      size: M.
      global_batch: B.
      rows: (b,) int sorted global rows this process feeds (`sharding.process_rows`).
      seed: data-order seed.
    """

    def __init__(self, size: int, global_batch: int, rows: np.ndarray, seed: int):
        self.size, self.global_batch, self.rows, self.seed = size, global_batch, np.asarray(rows), seed
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        """(b,) int64 item indices of this process's rows of the global batch of `step`."""
        positions = step * self.global_batch + self.rows
        out = np.empty(len(positions), np.int64)
        for epoch in np.unique(positions // self.size):
            sel = positions // self.size == epoch
            out[sel] = self._permutation(int(epoch))[positions[sel] % self.size]
        return out


class InMemoryBatches:
    """In-memory batches of the training data, one dataset or a weighted mixture (a dataset is a mixture of one),
    each chunk already normalized with its own dataset's normalizer. The global batch of step s is a fixed function
    of (seed, s), so a resumed run replays the batches of an uninterrupted one on any process count; this process
    keeps `rows` of it.

    One dataset: `EpochOrder` (every chunk once per epoch). A mixture: every row draws its dataset with probability
    weight / sum(weights), then a chunk of that dataset uniformly, from a generator seeded by (seed, s).

    Args:
      chunks: per member (M_i, H, D_a) float32 normalized train chunks.
      weights: per member sampling weight (> 0).
      global_batch: B.
      rows: (b,) int sorted global rows this process feeds.
      seed: data-order seed.
    """

    def __init__(self, chunks: Sequence[np.ndarray], weights: Sequence[float], global_batch: int, rows: np.ndarray,
                 seed: int):
        self.chunks, self.global_batch, self.rows, self.seed = list(chunks), global_batch, np.asarray(rows), seed
        w = np.asarray(weights, np.float64)
        self.probs = w / w.sum()
        self.sizes = np.array([len(c) for c in self.chunks], np.int64)
        self._order = EpochOrder(len(self.chunks[0]), global_batch, self.rows, seed) if len(self.chunks) == 1 else None

    def global_members(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """A mixture's (B,) int member index and (B,) int chunk index within that member, for the global batch of
        `step`."""
        rng = np.random.default_rng([self.seed, step, 0x6D6978])
        member = rng.choice(len(self.chunks), size=self.global_batch, p=self.probs)
        index = np.minimum((rng.random(self.global_batch) * self.sizes[member]).astype(np.int64),
                           self.sizes[member] - 1)
        return member, index

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """{"actions": (b, H, D_a) float32 normalized}: this process's rows of the global batch of `step`."""
        if self._order is not None:
            return {"actions": self.chunks[0][self._order.indices(step)]}
        member, index = self.global_members(step)
        return {"actions": np.stack([self.chunks[m][i] for m, i in zip(member[self.rows], index[self.rows])])}


class StreamingBatches:
    """This process's batches from a shuffled, repeated `tf.data` pipeline over its shard of the train episodes of
    one dataset or a weighted mixture (`loader.make_chunk_dataset` samples the members by weight), each row
    normalized on the host with its dataset's normalizer; re-seeded from the start step on resume (statistically,
    not bitwise, equivalent to an uninterrupted run).

    Args:
      local_batch: rows per process (global batch / process count).
      start_step: first step of this run.
    """

    def __init__(self, members: Sequence[Member], normalizers: Sequence[Normalizer],
                 data_cfg: ml_collections.ConfigDict, horizon: int, local_batch: int, seed: int, start_step: int):
        ds = loader.make_chunk_dataset([(m.spec, m.weight) for m in members], split="train", horizon=horizon,
                                       batch_size=local_batch, shuffle=True, repeat=True,
                                       seed=seed + 1_000_003 * start_step, val_fraction=data_cfg.val_fraction,
                                       split_seed=data_cfg.split_seed, shuffle_buffer=data_cfg.shuffle_buffer,
                                       with_episode_ids=True, process_index=jax.process_index(),
                                       process_count=jax.process_count())
        self._it, self.normalizers = ds.as_numpy_iterator(), list(normalizers)

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """{"actions": (b, H, D_a) float32 normalized}: the next batch (`step` is only for the interface)."""
        del step
        batch = next(self._it)
        return {"actions": normalize_rows(np.asarray(batch["actions"], np.float32), batch["dataset_index"],
                                          self.normalizers)}


def train_batches(members: Sequence[Member], normalizers: Sequence[Normalizer], data_cfg: ml_collections.ConfigDict,
                  horizon: int, global_batch: int, rows: np.ndarray, seed: int, start_step: int):
    """The training data's normalized batches: `InMemoryBatches` or `StreamingBatches` following
    `config.data.shuffle_buffer` (0: in memory); `local_batch(step)` -> {"actions": (b, H, D_a) float32}."""
    if int(data_cfg.shuffle_buffer) < 0:
        raise ValueError(f"config.data.shuffle_buffer must be 0 (in memory) or a buffer size > 0 (streaming), got "
                         f"{data_cfg.shuffle_buffer}.")
    if not data_cfg.shuffle_buffer:
        chunks = [n.normalize(load_chunks(m.spec, data_cfg, "train", horizon)) for m, n in zip(members, normalizers)]
        logging.info("Loaded %s train chunks of shape %s into memory.",
                     ", ".join(f"{m.label}: {len(c)}" for m, c in zip(members, chunks)), chunks[0].shape[1:])
        return InMemoryBatches(chunks, [m.weight for m in members], global_batch, rows, seed)
    return StreamingBatches(members, normalizers, data_cfg, horizon, len(rows), seed, start_step)
