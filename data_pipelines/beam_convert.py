"""Conversion on Apache Beam: the hdf5 / zarr / npz converters as a TFDS dataset builder whose examples are made by a
Beam pipeline over work items (a few episodes of one source file each).

  python -m data_pipelines.convert --format=hdf5 --input='demos/*.hdf5' --output=rlds/demos --num_workers=2
  python -m data_pipelines.convert ... --beam_pipeline_options="runner=FlinkRunner,flink_master=host:8081,..."

`--num_workers=N` runs Beam's DirectRunner with N worker processes on this machine; `--beam_pipeline_options` passes
"key=value,..." pairs through as Beam pipeline flags (e.g. runner=DataflowRunner,project=...,region=...), so the same
pipeline runs on Dataflow, Spark or Flink. Workers read their episodes, validate them against the first episode
(same checks and messages as the single-process path: a bad episode names its file and episode) and encode them;
TFDS's Beam writer sizes the shards. The result equals the single-process conversion (same episodes in the same
order, same values and features) and is written beside --output and moved there only when complete: a failed run
leaves nothing. Needs `pip install -e ".[beam]"` (apache-beam). With a cluster runner, --output must be on a
filesystem the workers share.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import convert as converters
from data_pipelines.rlds_writer import (VERSION, Episode, EpisodeError, _example, commit, dataset_name,
                                        episode_features, prepare_output, staging_dir, validate_episode)

_ERROR_TAG, _ERROR_END = "[oat episode error] ", " [/oat]"  # a worker's EpisodeError inside Beam's error text


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """A few consecutive episodes of one source: their global indices start at `start`."""

    start: int
    path: str
    demos: tuple[str, ...] = ()  # hdf5: the demo names
    first: int = 0  # zarr / npz: [first, stop) episode range of the source
    stop: int = 0


def count_episodes(fmt: str, path: str) -> int:
    """Episodes of a zarr store or an npz source (a folder of per-episode files, or one file with episode_ends)."""
    if fmt == "zarr":
        import zarr  # optional dependency: pip install -e .[convert]
        return len(zarr.open_group(path, mode="r")["meta"][converters.EPISODE_ENDS_KEY])
    if os.path.isdir(path):
        return sum(1 for f in os.listdir(path) if f.endswith(".npz"))
    with np.load(path, allow_pickle=False) as npz:
        return len(npz[converters.EPISODE_ENDS_KEY])


def plan(fmt: str, inputs: Sequence[str], mask: Optional[str] = None, episodes_per_item: int = 4) -> list[WorkItem]:
    """Work items covering every episode of `inputs` in the single-process reading order."""
    items, start = [], 0
    for path in inputs:
        if fmt == "hdf5":
            names = converters.hdf5_demo_names(path, mask)
            for i in range(0, len(names), episodes_per_item):
                items.append(WorkItem(start + i, path, demos=tuple(names[i:i + episodes_per_item])))
            start += len(names)
        else:
            n = count_episodes(fmt, path)
            items += [WorkItem(start + i, path, first=i, stop=min(i + episodes_per_item, n))
                      for i in range(0, n, episodes_per_item)]
            start += n
    return items


def read_item(fmt: str, item: WorkItem, action_key: Optional[str], language: str) -> Iterator[Episode]:
    """The episodes of one work item."""
    if fmt == "hdf5":
        return converters.read_hdf5(item.path, action_key=action_key, language=language, demos=item.demos)
    episodes = converters.READERS[fmt](item.path, action_key=action_key, language=language)
    return itertools.islice(episodes, item.first, item.stop)


def _examples(item: WorkItem, fmt: str, action_key: Optional[str], language: str, reference: dict):
    """(global index, example) of every episode of `item`, validated (runs on a Beam worker)."""
    try:
        for i, episode in enumerate(read_item(fmt, item, action_key, language)):
            validate_episode(episode, reference)
            yield item.start + i, _example(episode)
    except EpisodeError as e:
        raise RuntimeError(f"{_ERROR_TAG}{e}{_ERROR_END}") from None


class _BeamRLDSBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """RLDS dataset whose splits are Beam pipelines over `WorkItem`s (subclassed per dataset name)."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, fmt: str, splits: dict[str, list[WorkItem]], features: tfds.features.FeaturesDict,
                 reference: dict, action_key: Optional[str], language: str, description: str, **kwargs):
        self._fmt, self._splits, self._features, self._reference = fmt, splits, features, reference
        self._action_key, self._language, self._description = action_key, language, description
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self._description, features=self._features,
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager, pipeline=None):
        del dl_manager, pipeline
        return {split: self._generate_examples(items) for split, items in self._splits.items()}

    def _generate_examples(self, items: list[WorkItem]):
        import apache_beam as beam

        return (beam.Create(items) | beam.Reshuffle()
                | beam.FlatMap(_examples, fmt=self._fmt, action_key=self._action_key, language=self._language,
                               reference=self._reference))


def pipeline_options(num_workers: int = 0, beam_pipeline_options: str = "") -> Any:
    """Beam PipelineOptions: 'key=value,...' pairs as flags, else the DirectRunner with `num_workers` processes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if beam_pipeline_options:
        flags = [f"--{kv.strip()}" for kv in beam_pipeline_options.split(",") if kv.strip()]
        return PipelineOptions(flags=flags)
    return PipelineOptions(flags=[], runner="DirectRunner", direct_num_workers=max(int(num_workers), 1),
                           direct_running_mode="multi_processing")


def convert_beam(fmt: str, input_path: str, output: str, *, action_key: Optional[str] = None, language: str = "",
                 name: Optional[str] = None, overwrite: bool = False, image_encoding: str = "jpeg",
                 num_workers: int = 2, beam_pipeline_options: str = "", episodes_per_item: int = 4) -> str:
    """`convert.convert` on Apache Beam (see the module docstring); returns `output`.

    Raises the single-process path's errors: EpisodeError naming the file and episode of a malformed episode,
    FileNotFoundError / FileExistsError / ValueError naming the flag; nothing is left at `output` on failure.
    """
    try:
        import apache_beam  # noqa: F401
    except ImportError as e:
        raise ImportError('--num_workers / --beam_pipeline_options need Apache Beam: pip install -e ".[beam]"') from e
    if fmt not in converters.READERS:
        raise ValueError(f"format={fmt!r} is not one of {sorted(converters.READERS)}.")
    inputs = converters.expand_inputs(fmt, input_path)
    output = prepare_output(output, overwrite, inputs + ([input_path] if os.path.exists(input_path) else []))
    masks = converters.split_masks(fmt, inputs, input_path)
    splits = {"train": plan(fmt, inputs, "train" if "train" in masks else None, episodes_per_item),
              **{m: plan(fmt, inputs, m, episodes_per_item) for m in masks if m != "train"}}
    first_item = next((item for item in splits["train"]), None)
    first = next(iter(read_item(fmt, first_item, action_key, language)), None) if first_item else None
    if first is None:
        raise EpisodeError("The input has no episodes; nothing to convert.")
    reference = validate_episode(first)
    name = name or dataset_name(output)
    sources = os.path.abspath(inputs[0]) if len(inputs) == 1 else f"{len(inputs)} files ({input_path})"
    builder_cls = type(name, (_BeamRLDSBuilder,), {"name": name}, skip_registration=True)
    with staging_dir(output) as tmp:
        builder = builder_cls(fmt=fmt, splits=splits, features=episode_features(first, image_encoding),
                              reference=reference, action_key=action_key, language=language, data_dir=tmp,
                              description=f"Converted from {fmt} {sources} by data_pipelines.convert on Apache Beam.")
        config = tfds.download.DownloadConfig(
            beam_options=pipeline_options(num_workers, beam_pipeline_options))
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as e:  # noqa: BLE001  (Beam wraps worker errors; recover the episode's message)
            found = re.search(re.escape(_ERROR_TAG) + "(.+?)" + re.escape(_ERROR_END), str(e), re.DOTALL)
            if found:
                raise EpisodeError(found.group(1)) from None
            raise
        commit(str(builder.data_dir), output, tmp)
    return output
