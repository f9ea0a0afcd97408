"""Conversion on Apache Beam: the hdf5 / zarr / npz / lerobot converters and the Meta-World generator as one TFDS dataset
builder (the source format and its options are its `SourceConfig`) whose examples are made by a Beam pipeline over
work items (a few episodes of one source file, or one Meta-World task).

  python -m data_pipelines.convert --format=hdf5 --input='demos/*.hdf5' --output=rlds/demos --num_workers=2
  python -m data_pipelines.metaworld --tasks=heldout --output=rlds/heldout --num_workers=2
  python -m data_pipelines.convert ... --beam_pipeline_options="runner=FlinkRunner,flink_master=host:8081,..."

`--num_workers=N` runs Beam's DirectRunner with N worker processes on this machine; `--beam_pipeline_options` passes
"key=value,..." pairs through as Beam pipeline flags (e.g. runner=DataflowRunner,project=...,region=...), so the same
pipeline runs on Dataflow, Spark or Flink. Workers read (or simulate) their episodes, validate them against the first
episode (same checks and messages as the single-process path: a bad episode names its file and episode) and encode
them; TFDS's Beam writer sizes the shards. A second branch of the same pipeline gathers the train episodes' actions
and computes the dataset statistics (`rlds_writer.TRAIN_STATISTICS_SPLIT`), stored with the dataset as the
single-process path stores them. The result equals the single-process conversion (same episodes in the same order,
same values, features and statistics) and is written beside --output and moved there only when complete: a failed
run leaves nothing. Needs `pip install -e ".[beam]"` (apache-beam). With a cluster runner, --output must be on a
filesystem the workers share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import json
import os
import re
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import lerobot, metaworld_experts, reaper, sources, splits, statistics
from data_pipelines.rlds_writer import (TRAIN_STATISTICS_SPLIT, VERSION, Episode, EpisodeError, _example,
                                        check_dataset_name, commit, dataset_name, episode_features, prepare_output,
                                        staging_dir, validate_episode)

FORMATS = (*sources.READERS, "metaworld")
_ERRORS = {"EpisodeError": EpisodeError, "ValueError": ValueError, "RuntimeError": RuntimeError}
_ERROR_TAG, _ERROR_END = "[oat source error] ", " [/oat]"  # a worker's error inside Beam's error text
_STATS_TAG = "train_actions"  # side output of the example step: (index, (T, D_a) float32) of statistics episodes


@dataclasses.dataclass(eq=False)
class SourceConfig(tfds.core.BuilderConfig):
    """What to convert and how: the builder config of `RLDSSourceBuilder`."""

    fmt: str = "hdf5"  # source format: hdf5, zarr, npz or metaworld
    inputs: tuple[str, ...] = ()  # source files / stores in reading order; metaworld: task names
    action_key: Optional[str] = None  # name of the action array (None: action / actions)
    language: str = ""  # instruction for episodes that carry none
    image_encoding: str = "jpeg"  # how images are stored: jpeg or png
    episodes_per_item: int = 4  # episodes per work item (files); a Meta-World item is one whole task
    episodes_per_task: int = 20  # metaworld: successful episodes per task
    seed: int = 0  # metaworld: benchmark seed of the first 50 goals per task
    max_steps: int = 500  # metaworld: step limit of an episode
    statistics_split: Optional[tuple[float, int]] = TRAIN_STATISTICS_SPLIT  # train statistics stored (None: not)
    tolerance_s: float = lerobot.DEFAULT_TOLERANCE_S  # lerobot: largest frame-timestamp gap of a decoded video frame


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """A few consecutive episodes of one source: their global indices start at `start`."""

    start: int
    path: str  # a source file / store; metaworld: the task
    demos: tuple[str, ...] = ()  # hdf5: the demo names
    first: int = 0  # zarr / npz: [first, stop) episode range of the source; metaworld: [0, episodes)
    stop: int = 0

    @property
    def num_episodes(self) -> int:
        return len(self.demos) if self.demos else self.stop - self.first

    def head(self) -> "WorkItem":
        """The item of this item's first episode only."""
        return dataclasses.replace(self, demos=self.demos[:1]) if self.demos else dataclasses.replace(
            self, stop=self.first + 1)


def count_episodes(fmt: str, path: str) -> int:
    """Episodes of a zarr store, an npz source (a folder of per-episode files, or one file with episode_ends) or a
    LeRobot dataset."""
    if fmt == "lerobot":
        return lerobot.count_episodes(path)
    if fmt == "zarr":
        import zarr  # optional dependency: pip install -e .[convert]
        return len(zarr.open_group(path, mode="r")["meta"][sources.EPISODE_ENDS_KEY])
    if os.path.isdir(path):
        return sum(1 for f in os.listdir(path) if f.endswith(".npz"))
    with np.load(path, allow_pickle=False) as npz:
        return len(npz[sources.EPISODE_ENDS_KEY])


def plan(config: SourceConfig, mask: Optional[str] = None) -> list[WorkItem]:
    """Work items covering every episode of `config.inputs` (robomimic mask `mask` only) in the single-process
    reading order."""
    items, start, per_item = [], 0, config.episodes_per_item
    for path in config.inputs:
        if config.fmt == "metaworld":
            items.append(WorkItem(start, path, stop=config.episodes_per_task))
            start += config.episodes_per_task
        elif config.fmt == "hdf5":
            names = sources.hdf5_demo_names(path, mask)
            items += [WorkItem(start + i, path, demos=tuple(names[i:i + per_item]))
                      for i in range(0, len(names), per_item)]
            start += len(names)
        else:
            n = count_episodes(config.fmt, path)
            items += [WorkItem(start + i, path, first=i, stop=min(i + per_item, n)) for i in range(0, n, per_item)]
            start += n
    return items


def read_item(config: SourceConfig, item: WorkItem) -> Iterator[Episode]:
    """The episodes of one work item (a Meta-World item simulates its task's episodes)."""
    if config.fmt == "metaworld":
        return metaworld_experts.task_episodes(item.path, item.stop, seed=config.seed, max_steps=config.max_steps)
    if config.fmt == "hdf5":
        return sources.read_hdf5(item.path, action_key=config.action_key, language=config.language,
                                    demos=item.demos)
    if config.fmt == "lerobot":  # reads only the item's episodes (and their video frames)
        return lerobot.read_lerobot(item.path, action_key=config.action_key, language=config.language,
                                    episodes=range(item.first, item.stop), tolerance_s=config.tolerance_s)
    episodes = sources.READERS[config.fmt](item.path, action_key=config.action_key, language=config.language)
    return itertools.islice(episodes, item.first, item.stop)


def _examples(item: WorkItem, config: SourceConfig, reference: dict, statistics_ids: frozenset):
    """(global index, example) of every episode of `item`, validated (runs on a Beam worker); the actions of the
    episodes in `statistics_ids` also go to the `_STATS_TAG` output."""
    import apache_beam as beam

    try:
        for i, episode in enumerate(read_item(config, item)):
            validate_episode(episode, reference)
            if item.start + i in statistics_ids:
                yield beam.pvalue.TaggedOutput(_STATS_TAG, (item.start + i, np.asarray(episode.action, np.float32)))
            yield item.start + i, _example(episode)
    except tuple(_ERRORS.values()) as e:
        raise RuntimeError(f"{_ERROR_TAG}{type(e).__name__}: {e}{_ERROR_END}") from None


def _write_statistics(indexed_actions: list, path: str, val_fraction: float, split_seed: int) -> None:
    """Writes the train statistics of (index, actions) pairs (in any order) as JSON to `path` (a Beam step)."""
    actions = [a for _, a in sorted(indexed_actions, key=lambda pair: pair[0])]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(statistics.summarize_episodes(actions, "train", val_fraction, split_seed), f)


class RLDSSourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """RLDS dataset whose splits are Beam pipelines over `WorkItem`s of its `SourceConfig` (subclassed per dataset
    name); the train split's pipeline also writes the train statistics to `statistics_path`."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, splits_items: dict[str, list[WorkItem]], features: tfds.features.FeaturesDict,
                 reference: dict, description: str, statistics_path: str, **kwargs):
        self._splits_items, self._features, self._reference = splits_items, features, reference
        self._description, self._statistics_path = description, statistics_path
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self._description, features=self._features,
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager, pipeline=None):
        del dl_manager, pipeline
        return {split: self._generate_examples(items, split == "train")
                for split, items in self._splits_items.items()}

    def _generate_examples(self, items: list[WorkItem], with_statistics: bool):
        import apache_beam as beam

        config, reference, path = self.builder_config, self._reference, self._statistics_path
        stats_split = config.statistics_split if with_statistics else None
        num = sum(item.num_episodes for item in items)
        ids = frozenset(splits.split_episode_ids(num, "train", *stats_split).tolist()) if stats_split else frozenset()

        class Examples(beam.PTransform):
            def expand(self, pbegin):
                out = (pbegin | beam.Create(items) | beam.Reshuffle()
                       | beam.FlatMap(_examples, config=config, reference=reference, statistics_ids=ids)
                       .with_outputs(_STATS_TAG, main="examples"))
                if stats_split:
                    _ = (out[_STATS_TAG] | beam.combiners.ToList()
                         | beam.Map(_write_statistics, path, *stats_split))
                return out.examples

        return Examples()


def pipeline_options(num_workers: int = 0, beam_pipeline_options: str = "") -> Any:
    """Beam PipelineOptions: 'key=value,...' pairs as flags, else the DirectRunner with `num_workers` processes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if beam_pipeline_options:
        flags = [f"--{kv.strip()}" for kv in beam_pipeline_options.split(",") if kv.strip()]
        return PipelineOptions(flags=flags)
    return PipelineOptions(flags=[], runner="DirectRunner", direct_num_workers=max(int(num_workers), 1),
                           direct_running_mode="multi_processing", default_sdk_harness_log_level="WARNING")


def _require_beam() -> None:
    try:
        importlib.import_module("apache_beam")
    except ImportError as e:
        raise ImportError('--num_workers / --beam_pipeline_options need Apache Beam: pip install -e ".[beam]"') from e


def build(config: SourceConfig, output: str, *, name: str, description: str, masks: Sequence[str] = (),
          num_workers: int = 2, beam_pipeline_options: str = "") -> str:
    """Runs the Beam conversion of `config` into the RLDS builder directory `output` (`masks`: robomimic masks,
    each its own split) and returns `output`; nothing is left there on failure. Raises the sources' errors:
    EpisodeError naming the file and episode, RuntimeError of an unreliable Meta-World task."""
    check_dataset_name(name)
    _require_beam()
    split_items = {"train": plan(config, "train" if "train" in masks else None),
                   **{m: plan(config, m) for m in masks if m != "train"}}
    first_item = next(iter(split_items["train"]), None)
    first = next(iter(read_item(config, first_item.head())), None) if first_item else None
    if first is None:
        raise EpisodeError("The input has no episodes; nothing to convert.")
    builder_cls = type(name, (RLDSSourceBuilder,), {"name": name, "BUILDER_CONFIGS": [config]},
                       skip_registration=True)
    with staging_dir(output) as tmp:
        stats_path = os.path.join(tmp, "train_statistics.json")
        builder = builder_cls(config=config, splits_items=split_items, data_dir=tmp, reference=validate_episode(first),
                              features=episode_features(first, config.image_encoding), description=description,
                              statistics_path=stats_path)
        download = tfds.download.DownloadConfig(beam_options=pipeline_options(num_workers, beam_pipeline_options))
        # The DirectRunner's worker processes end with this one, even when it is killed.
        local = contextlib.nullcontext() if beam_pipeline_options else reaper.descendants_end_with_this_process()
        try:
            with local:
                builder.download_and_prepare(download_config=download)
        except Exception as e:  # noqa: BLE001  (Beam wraps worker errors; recover the source's message)
            found = re.search(re.escape(_ERROR_TAG) + r"(\w+): (.+?)" + re.escape(_ERROR_END), str(e), re.DOTALL)
            if found:
                raise _ERRORS[found.group(1)](found.group(2)) from None
            raise
        if config.statistics_split is not None:
            with open(stats_path, encoding="utf-8") as f:
                statistics.store_train_statistics(str(builder.data_dir), json.load(f))
        commit(str(builder.data_dir), output, tmp)
    return output


def convert_beam(fmt: str, input_path: str, output: str, *, action_key: Optional[str] = None, language: str = "",
                 name: Optional[str] = None, overwrite: bool = False, image_encoding: str = "jpeg",
                 num_workers: int = 2, beam_pipeline_options: str = "", episodes_per_item: int = 4,
                 tolerance_s: float = lerobot.DEFAULT_TOLERANCE_S) -> str:
    """`convert.convert` on Apache Beam (see the module docstring); returns `output`.

    Raises the single-process path's errors: EpisodeError naming the file and episode of a malformed episode,
    FileNotFoundError / FileExistsError / ValueError naming the flag; nothing is left at `output` on failure.
    """
    _require_beam()
    if fmt not in sources.READERS:
        raise ValueError(f"format={fmt!r} is not one of {sorted(sources.READERS)}.")
    inputs = sources.expand_inputs(fmt, input_path)
    output = prepare_output(output, overwrite, inputs + ([input_path] if os.path.exists(input_path) else []))
    masks = sources.split_masks(fmt, inputs, input_path)
    config = SourceConfig(name="source", fmt=fmt, inputs=tuple(inputs), action_key=action_key, language=language,
                          image_encoding=image_encoding, episodes_per_item=episodes_per_item, tolerance_s=tolerance_s)
    where = os.path.abspath(inputs[0]) if len(inputs) == 1 else f"{len(inputs)} files ({input_path})"
    return build(config, output, name=name or dataset_name(output), masks=masks, num_workers=num_workers,
                 beam_pipeline_options=beam_pipeline_options,
                 description=f"Converted from {fmt} {where} by data_pipelines.convert on Apache Beam.")


def generate_metaworld_beam(tasks: Sequence[str], episodes_per_task: int, output: str, *, seed: int = 0,
                            max_steps: int = 500, overwrite: bool = False, num_workers: int = 2,
                            beam_pipeline_options: str = "") -> str:
    """`metaworld.generate` on Apache Beam, one work item per task (tasks simulate in parallel); the same
    dataset as the single-process generator. Returns `output`."""
    _require_beam()
    output = prepare_output(output, overwrite)
    config = SourceConfig(name="metaworld", fmt="metaworld", inputs=tuple(tasks), episodes_per_task=episodes_per_task,
                          seed=seed, max_steps=max_steps, image_encoding="png")
    return build(config, output, name=metaworld_experts.DATASET_NAME, num_workers=num_workers,
                 beam_pipeline_options=beam_pipeline_options,
                 description=metaworld_experts.description(tasks, episodes_per_task, seed))
