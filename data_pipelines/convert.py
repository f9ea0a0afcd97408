"""Convert demonstrations to RLDS: `python -m data_pipelines.convert --format={hdf5,zarr,npz} --input=... --output=...`

Input layouts:
  hdf5  robomimic / LIBERO: data/demo_<i>/actions (T, D_a), data/demo_<i>/obs/<key> (T, ...), optional
        data/demo_<i>/rewards; language from the demo's or data's "language_instruction" attribute, or LIBERO's
        data.attrs["problem_info"] JSON.
  zarr  diffusion-policy / OAT replay buffer: data/<key> arrays (N, ...) concatenated over episodes,
        meta/episode_ends (E,) exclusive end index of each episode.
  npz   a directory of per-episode .npz files (sorted by name), each with action (T, D_a) + observation arrays;
        or one .npz file with concatenated arrays and an episode_ends (E,) array.
  lerobot  a local LeRobot dataset directory, format v2.1 or v3.0 (meta/info.json, parquet frames, MP4 cameras
        decoded at the frame timestamps, each frame's task as its instruction; see data_pipelines/lerobot.py).
Keys named action/actions are the action (override with --action_key); reward/rewards become the step reward;
every other per-step array is an observation. --input may also be a folder of HDF5 files (a LIBERO suite: one
file per task, each episode keeping its file's instruction) or a quoted glob; all become one dataset. robomimic's
filter keys (mask/<name> lists of demos) become TFDS splits of the same name, mask/train the 'train' split (without
it, 'train' holds every episode); train on another one with --config.data.source_split. Images are
stored as JPEG by default, as in published Open X-Embodiment datasets (--image_encoding=png for lossless). The
output is written atomically (see rlds_writer.write_rlds). The readers are in data_pipelines/sources.py.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Optional, Sequence

from data_pipelines import lerobot
from data_pipelines.rlds_writer import EpisodeError, check_output_apart, write_rlds
from data_pipelines.sources import READERS, expand_inputs, split_masks


def convert(fmt: str, input_path: str, output: str, *, action_key: Optional[str] = None, language: str = "",
            name: Optional[str] = None, overwrite: bool = False, image_encoding: str = "jpeg",
            tolerance_s: float = lerobot.DEFAULT_TOLERANCE_S) -> str:
    """Convert `input_path` (a file, a folder of HDF5 files or a glob; see `expand_inputs`) in format `fmt` to one
    RLDS builder directory `output`, episodes in file order (each keeps its own file's instruction); images are
    stored as `image_encoding` ('jpeg' as published datasets, or lossless 'png'); `tolerance_s`: lerobot only, the
    largest gap between a frame's timestamp and its decoded video frame. Returns `output`."""
    if fmt not in READERS:
        raise ValueError(f"format={fmt!r} is not one of {sorted(READERS)}.")
    inputs = expand_inputs(fmt, input_path)
    check_output_apart(output, inputs + ([input_path] if os.path.exists(input_path) else []))  # before reading

    options = {"tolerance_s": tolerance_s} if fmt == "lerobot" else {}

    def episodes(**mask):
        for item in inputs:
            yield from READERS[fmt](item, action_key=action_key, language=language, **mask, **options)

    masks = split_masks(fmt, inputs, input_path)
    # robomimic's filter keys become splits: mask/train is 'train' (all episodes when there is no such mask)
    train = functools.partial(episodes, mask="train") if "train" in masks else episodes
    splits = {m: functools.partial(episodes, mask=m) for m in masks if m != "train"}
    sources = os.path.abspath(inputs[0]) if len(inputs) == 1 else f"{len(inputs)} files ({input_path})"
    return write_rlds(train(), output, name=name, overwrite=overwrite, inputs=inputs, image_encoding=image_encoding,
                      description=f"Converted from {fmt} {sources} by data_pipelines.convert.", splits=splits)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(READERS), help="input layout")
    parser.add_argument("--input", required=True,
                        help="input file, store or directory; for hdf5 also a folder of files or a glob (quote it)")
    parser.add_argument("--image_encoding", default="jpeg", choices=("jpeg", "png"),
                        help="how images are stored (jpeg as published datasets; png is lossless)")
    parser.add_argument("--output", required=True, help="RLDS builder directory to create")
    parser.add_argument("--action_key", default=None, help="name of the action array (default: action/actions)")
    parser.add_argument("--language", default="", help="instruction for episodes that carry none")
    parser.add_argument("--name", default=None, help="TFDS dataset name (default: from --output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--tolerance_s", type=float, default=lerobot.DEFAULT_TOLERANCE_S,
                        help="lerobot: largest gap (seconds) between a frame's timestamp and the video frame decoded "
                             "for it (LeRobot's default)")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="convert on Apache Beam's DirectRunner with this many processes (0: one process, no Beam)")
    parser.add_argument("--beam_pipeline_options", default="",
                        help="run on Apache Beam with these 'key=value,...' pipeline options (e.g. "
                             "runner=FlinkRunner,flink_master=host:8081); see data_pipelines/beam_convert.py")
    args = parser.parse_args(argv)
    try:
        options = dict(action_key=args.action_key, language=args.language, name=args.name,
                       overwrite=args.overwrite, image_encoding=args.image_encoding, tolerance_s=args.tolerance_s)
        if args.num_workers > 0 or args.beam_pipeline_options:
            from data_pipelines.beam_convert import convert_beam
            out = convert_beam(args.format, args.input, args.output, num_workers=args.num_workers,
                               beam_pipeline_options=args.beam_pipeline_options, **options)
        else:
            out = convert(args.format, args.input, args.output, **options)
    except (EpisodeError, FileExistsError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
