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
TensorFlow, and this process writes them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import warnings
from typing import Iterator, Optional, Sequence

import numpy as np

from data_pipelines.rlds_writer import Episode, write_rlds

MT10_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
# The 40 Meta-World v3 tasks outside MT10, i.e. absent from the embedded training dataset (unseen-task evaluation).
HELDOUT_TASKS = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-wall-v3",
    "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3",
    "disassemble-v3", "door-close-v3", "door-lock-v3", "door-unlock-v3", "faucet-close-v3", "faucet-open-v3",
    "hammer-v3", "hand-insert-v3", "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3",
    "handle-pull-v3", "lever-pull-v3", "peg-unplug-side-v3", "pick-out-of-hole-v3", "pick-place-wall-v3",
    "plate-slide-back-side-v3", "plate-slide-back-v3", "plate-slide-side-v3", "plate-slide-v3", "push-back-v3",
    "push-wall-v3", "reach-wall-v3", "shelf-place-v3", "soccer-v3", "stick-pull-v3", "stick-push-v3",
    "sweep-into-v3", "sweep-v3")
TASK_SETS = {"mt10": MT10_TASKS, "heldout": HELDOUT_TASKS}  # keywords accepted by --tasks
DATASET_NAME = "metaworld_scripted"  # TFDS name of the generated datasets


def render_kwargs(camera: str, image_size: int) -> dict:
    """Environment constructor arguments rendering `camera` offscreen as (image_size, image_size, 3) uint8 frames
    ({} for camera ''); MUJOCO_GL defaults to 'egl' (headless; the evaluation's `oat_jax.eval.rollouts` does the same
    for its environments: data_pipelines does not import oat_jax)."""
    if image_size < 1:
        raise ValueError(f"--image_size={image_size} must be >= 1.")
    os.environ.setdefault("MUJOCO_GL", "egl")
    if not camera:
        return {}
    return {"render_mode": "rgb_array", "camera_name": camera, "width": image_size, "height": image_size}


def parse_tasks(spec: str) -> list[str]:
    """'reach-v3,push-v3' or a keyword of TASK_SETS ('mt10', 'heldout'), comma-separated and combinable -> task
    names in order, without repeats."""
    tasks: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for task in TASK_SETS.get(part, (part,) if part else ()):
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise ValueError(f"--tasks={spec!r} names no task; give task names or one of {sorted(TASK_SETS)}.")
    return tasks


def task_instruction(task: str) -> str:
    """'button-press-topdown-v3' -> 'button press topdown'."""
    return " ".join(part for part in task.split("-") if not (part.startswith("v") and part[1:].isdigit()))


def rollout(env, policy, max_steps: int, render: bool = False) -> dict:
    """One episode of `policy` in `env` (already set to a task).

    Returns {"state": (T, 39) float32, "action": (T, 4) float32 in [-1, 1], "reward": (T,) float32,
    "success": (T,) bool} (+ "image": (T, s, s, 3) uint8 `env.render()` of each state when `render`; the
    environment must be made with render_mode='rgb_array'); it stops after the first successful step or after
    `max_steps` steps.
    """
    obs, _ = env.reset()
    states, actions, rewards, successes, images = [], [], [], [], []
    for _ in range(max_steps):
        action = np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)
        states.append(np.asarray(obs, dtype=np.float32))
        if render:  # the frame of the state just recorded, before the action moves the scene
            images.append(np.asarray(env.render(), np.uint8))
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        successes.append(bool(info["success"]))
        if successes[-1] or terminated or truncated:
            break
    out = {"state": np.stack(states), "action": np.stack(actions), "reward": np.asarray(rewards, np.float32),
           "success": np.asarray(successes, bool)}
    if render:
        out["image"] = np.stack(images)
    return out


def task_episodes(task: str, episodes: int, *, seed: int = 0, max_steps: int = 500, max_attempts: Optional[int] = None,
                  progress=None, camera: str = "", image_size: int = 64) -> Iterator[Episode]:
    """`episodes` successful scripted demonstrations of `task` on distinct seeded goals.

    With `camera` (a Meta-World camera name; '' = none) the episodes' observations also hold "image"
    (T, image_size, image_size, 3) uint8 frames of that camera.

    Raises RuntimeError when `max_attempts` (default 3 * episodes + 10) rollouts give too few successes: the
    scripted policy is not reliable on that task; drop it from --tasks.
    """
    import metaworld  # optional dependency: pip install -e .[metaworld]
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ValueError(f"Unknown Meta-World task {task!r}; choose from {sorted(ENV_POLICY_MAP)}.")
    policy = ENV_POLICY_MAP[task]()
    max_attempts = max_attempts or 3 * episodes + 10
    kept = attempts = 0
    benchmark_seed, env, goals = None, None, []
    render = render_kwargs(camera, int(image_size))
    try:
        while kept < episodes:
            if attempts >= max_attempts:
                raise RuntimeError(f"{task}: only {kept}/{episodes} successes in {attempts} scripted rollouts; the "
                                   "policy is not reliable on this task, drop it from --tasks.")
            goal_index = attempts % 50
            if goal_index == 0:  # a fresh set of 50 seeded goals
                benchmark_seed = seed + 1000 * (attempts // 50)
                benchmark = metaworld.MT1(task, seed=benchmark_seed)
                if env is not None and render:
                    env.close()  # frees the renderer's OpenGL context
                env = benchmark.train_classes[task](**render)
                goals = benchmark.train_tasks
            env.set_task(goals[goal_index])
            attempts += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the scripted policies warn about clipped gains
                steps = rollout(env, policy, max_steps, render=bool(render))
            success = bool(steps["success"][-1])
            if progress is not None:
                progress.set_postfix(task=task, failed=attempts - kept - success)
            if not success:
                continue
            yield Episode(source=f"metaworld {task} episode {kept}", action=steps["action"],
                          observation={k: steps[k] for k in ("state", "image") if k in steps},
                          language=task_instruction(task),
                          extras={"reward": steps["reward"], "success": steps["success"]},
                          metadata={"task": task, "success": True, "goal_index": goal_index,
                                    "benchmark_seed": benchmark_seed})
            kept += 1
            if progress is not None:
                progress.update(1)
    finally:
        if env is not None and render:
            env.close()


def _rendered_task(args: tuple) -> list[Episode]:
    """Every episode of one task, with camera frames (runs in the rendering child process of `generate`)."""
    task, episodes, seed, max_steps, camera, image_size = args
    return list(task_episodes(task, episodes, seed=seed, max_steps=max_steps, camera=camera, image_size=image_size))


def description(tasks: Sequence[str], episodes_per_task: int, seed: int, camera: str = "",
                image_size: int = 64) -> str:
    """The dataset description of a generated dataset."""
    images = f", camera {camera!r} at {image_size}x{image_size}" if camera else ""
    return (f"Scripted Meta-World v3 demonstrations, tasks {list(tasks)}, {episodes_per_task} successful episodes "
            f"each, seed {seed}{images}.")


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
