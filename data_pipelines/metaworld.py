"""Scripted Meta-World demonstrations as RLDS:
`python -m data_pipelines.metaworld --tasks=reach-v3,push-v3 --episodes_per_task=20 --output=DIR`

Each task's goals come from `metaworld.MT1(task, seed)` (50 seeded random goal/object positions per benchmark
seed); episodes roll out the package's scripted expert (`metaworld.policies`) on distinct goals, actions clipped
to [-1, 1], and end at the first successful step (or the step limit). Only successful episodes are kept: a failed
goal is replaced by the next one (a new benchmark seed when the 50 are used up). Per step the dataset holds the
39-D state observation (`observation/state`), the 4-D action, reward and success flag; the instruction is the
task name in words ("button press topdown"); episode metadata holds the task, goal index and benchmark seed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Iterator, Optional, Sequence

import numpy as np

from data_pipelines.rlds_writer import Episode, write_rlds

MT10_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")


def task_instruction(task: str) -> str:
    """'button-press-topdown-v3' -> 'button press topdown'."""
    return " ".join(part for part in task.split("-") if not (part.startswith("v") and part[1:].isdigit()))


def rollout(env, policy, max_steps: int) -> dict:
    """One episode of `policy` in `env` (already set to a task).

    Returns {"state": (T, 39) float32, "action": (T, 4) float32 in [-1, 1], "reward": (T,) float32,
    "success": (T,) bool}; it stops after the first successful step or after `max_steps` steps.
    """
    obs, _ = env.reset()
    states, actions, rewards, successes = [], [], [], []
    for _ in range(max_steps):
        action = np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)
        states.append(np.asarray(obs, dtype=np.float32))
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        successes.append(bool(info["success"]))
        if successes[-1] or terminated or truncated:
            break
    return {"state": np.stack(states), "action": np.stack(actions), "reward": np.asarray(rewards, np.float32),
            "success": np.asarray(successes, bool)}


def task_episodes(task: str, episodes: int, *, seed: int = 0, max_steps: int = 500, max_attempts: Optional[int] = None,
                  progress=None) -> Iterator[Episode]:
    """`episodes` successful scripted demonstrations of `task` on distinct seeded goals.

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
    while kept < episodes:
        if attempts >= max_attempts:
            raise RuntimeError(f"{task}: only {kept}/{episodes} successes in {attempts} scripted rollouts; the policy "
                               "is not reliable on this task, drop it from --tasks.")
        goal_index = attempts % 50
        if goal_index == 0:  # a fresh set of 50 seeded goals
            benchmark_seed = seed + 1000 * (attempts // 50)
            benchmark = metaworld.MT1(task, seed=benchmark_seed)
            env = benchmark.train_classes[task]()
            goals = benchmark.train_tasks
        env.set_task(goals[goal_index])
        attempts += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scripted policies warn about clipped gains
            steps = rollout(env, policy, max_steps)
        success = bool(steps["success"][-1])
        if progress is not None:
            progress.set_postfix(task=task, failed=attempts - kept - success)
        if not success:
            continue
        yield Episode(source=f"metaworld {task} episode {kept}", action=steps["action"],
                      observation={"state": steps["state"]}, language=task_instruction(task),
                      extras={"reward": steps["reward"], "success": steps["success"]},
                      metadata={"task": task, "success": True, "goal_index": goal_index,
                                "benchmark_seed": benchmark_seed})
        kept += 1
        if progress is not None:
            progress.update(1)


def generate(tasks: Sequence[str], episodes_per_task: int, output: str, *, seed: int = 0, max_steps: int = 500,
             overwrite: bool = False) -> str:
    """Roll out every task and write one RLDS dataset (tasks in the given order); returns `output`."""
    from tqdm import tqdm

    def all_episodes(progress):
        for task in tasks:
            yield from task_episodes(task, episodes_per_task, seed=seed, max_steps=max_steps, progress=progress)

    with tqdm(total=len(tasks) * episodes_per_task, desc="Meta-World demos", unit="episode") as progress:
        return write_rlds(all_episodes(progress), output, name="metaworld_scripted", overwrite=overwrite,
                          description=f"Scripted Meta-World v3 demonstrations, tasks {list(tasks)}, "
                                      f"{episodes_per_task} successful episodes each, seed {seed}.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.metaworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(MT10_TASKS), help="comma-separated v3 task names (default MT10)")
    parser.add_argument("--episodes_per_task", type=int, default=20, help="successful episodes per task")
    parser.add_argument("--output", required=True, help="RLDS builder directory to create")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed of the first 50 goals per task")
    parser.add_argument("--max_steps", type=int, default=500, help="step limit of an episode")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    out = generate(tasks, args.episodes_per_task, args.output, seed=args.seed, max_steps=args.max_steps,
                   overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
