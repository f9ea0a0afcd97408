"""Meta-World's scripted experts as an episode source: the task sets, one rollout of the expert policy, and the
successful episodes of a task (`task_episodes`), with optional offscreen camera frames. `data_pipelines.metaworld`
writes them as an RLDS dataset (in one process), `data_pipelines.beam_convert` on Apache Beam; see metaworld.py for
the dataset's layout.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterator, Optional, Sequence

import numpy as np

from data_pipelines.rlds_writer import Episode

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
