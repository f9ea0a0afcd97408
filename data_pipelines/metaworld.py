"""Scripted Meta-World demonstrations as RLDS:
`python -m data_pipelines.metaworld --tasks=reach-v3,push-v3 --episodes_per_task=20 --output=DIR`
(`--tasks=heldout` = the 40 tasks outside MT10: unseen-task evaluation data for tokenizers trained on MT10)

Each task's goals come from `metaworld.MT1(task, seed)` (50 seeded random goal/object positions per benchmark
seed); episodes roll out the package's scripted expert (`metaworld.policies`) on distinct goals, actions clipped
to [-1, 1], and end at the first successful step (or the step limit). Only successful episodes are kept: a failed
goal is replaced by the next one (a new benchmark seed when the 50 are used up). Per step the dataset holds the
39-D state observation (`observation/state`), the 4-D action, reward and success flag; the instruction is the
task name in words ("button press topdown"); episode metadata holds the task, goal index and benchmark seed.

`--camera=corner` (or corner2, corner3, corner4, topview, behindGripper, gripperPOV) also renders that camera
offscreen at every step, as a (image_size, image_size, 3) uint8 image `observation/image` of the same state as
`observation/state` (`--image_size`, default 64). Rendering runs MuJoCo's OpenGL renderer headless: MUJOCO_GL
defaults to 'egl' (Mesa's software EGL works without a GPU); it costs far more than simulating a step (see
experiments/recipes/image_costs.py). MuJoCo's EGL renderer and TensorFlow crash when loaded into one process (seen
with Mesa's EGL on CPU), so with --camera the episodes are simulated in a spawned child process that never imports
TensorFlow, and this process writes them. The expert episodes themselves come from data_pipelines/metaworld_experts.py.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from typing import Optional, Sequence


# the task sets and the expert's episodes are also importable from here (data_pipelines.metaworld.MT10_TASKS, ...)
from data_pipelines.metaworld_experts import (DATASET_NAME, HELDOUT_TASKS, MT10_TASKS, TASK_SETS,  # noqa: F401
                                              _rendered_task, description, parse_tasks, render_kwargs, rollout,
                                              task_episodes, task_instruction)
from data_pipelines.rlds_writer import write_rlds


def generate(tasks: Sequence[str], episodes_per_task: int, output: str, *, seed: int = 0, max_steps: int = 500,
             overwrite: bool = False, num_workers: int = 0, beam_pipeline_options: str = "", camera: str = "",
             image_size: int = 64) -> str:
    """Roll out every task and write one RLDS dataset (tasks in the given order); returns `output`.

    camera / image_size: see `task_episodes` (rendered images are written in this process only, not on Beam yet).

    With `num_workers` > 0 or `beam_pipeline_options` the tasks are simulated in parallel on Apache Beam
    (`data_pipelines.beam_convert`; the same dataset); otherwise in this process with a progress bar."""
    if num_workers > 0 or beam_pipeline_options:
        if camera:
            raise ValueError("--camera is not supported with --num_workers / --beam_pipeline_options yet; generate "
                             "image datasets in one process.")
        from data_pipelines.beam_convert import generate_metaworld_beam
        return generate_metaworld_beam(tasks, episodes_per_task, output, seed=seed, max_steps=max_steps,
                                       overwrite=overwrite, num_workers=num_workers,
                                       beam_pipeline_options=beam_pipeline_options)
    from tqdm import tqdm

    def all_episodes(progress):
        if not camera:
            for task in tasks:
                yield from task_episodes(task, episodes_per_task, seed=seed, max_steps=max_steps, progress=progress)
            return
        # rendering in a child process without TensorFlow (see the module docstring); one task at a time, in order
        work = [(task, episodes_per_task, seed, max_steps, camera, image_size) for task in tasks]
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            for task_list in pool.imap(_rendered_task, work):
                yield from task_list
                progress.update(len(task_list))

    with tqdm(total=len(tasks) * episodes_per_task, desc="Meta-World demos", unit="episode") as progress:
        return write_rlds(all_episodes(progress), output, name=DATASET_NAME, overwrite=overwrite,
                          description=description(tasks, episodes_per_task, seed, camera, image_size))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.metaworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mt10",
                        help="comma-separated v3 task names or keywords: 'mt10' (default), 'heldout' (the 40 tasks "
                             "outside MT10, unseen by the embedded training data)")
    parser.add_argument("--episodes_per_task", type=int, default=20, help="successful episodes per task")
    parser.add_argument("--output", required=True, help="RLDS builder directory to create")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed of the first 50 goals per task")
    parser.add_argument("--max_steps", type=int, default=500, help="step limit of an episode")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="simulate the tasks in parallel on Apache Beam's DirectRunner with this many processes "
                             "(0: one process, no Beam)")
    parser.add_argument("--beam_pipeline_options", default="",
                        help="run on Apache Beam with these 'key=value,...' pipeline options; see "
                             "data_pipelines/beam_convert.py")
    parser.add_argument("--camera", default="",
                        help="also store this camera's rendered frames as observation/image: corner, corner2, "
                             "corner3, corner4, topview, behindGripper, gripperPOV ('' = no images)")
    parser.add_argument("--image_size", type=int, default=64, help="height = width of the rendered frames")
    args = parser.parse_args(argv)
    tasks = parse_tasks(args.tasks)
    out = generate(tasks, args.episodes_per_task, args.output, seed=args.seed, max_steps=args.max_steps,
                   overwrite=args.overwrite, num_workers=args.num_workers,
                   beam_pipeline_options=args.beam_pipeline_options, camera=args.camera, image_size=args.image_size)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
