"""Batched closed-loop rollouts: observation histories and re-planning for environments stepped in lock-step with
one batched policy call per re-plan (any environments with the gymnasium API), and Meta-World v3 evaluation
environments."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from oat_jax.timing import Stopwatch

PAPER_TASKS = ("box-close-v3", "coffee-pull-v3", "disassemble-v3", "stick-pull-v3")
EVAL_BENCHMARK_SEED = 10_000  # MT1 seed offset of the evaluation goals (demonstrations use 0, 1000, 2000, ...)


def first_history(obs: np.ndarray, n_obs_steps: int) -> np.ndarray:
    """First observations (B, obs_dim) -> history (B, K, obs_dim) float32 repeating them (as in training)."""
    return np.repeat(np.asarray(obs, np.float32)[:, None], n_obs_steps, axis=1)


class ChunkExecutor:
    """Observation histories and re-planning for B environments stepped in lock-step.

    Args:
      act: (B, K, obs_dim) float32 raw observation histories -> (actions (B, H, D_a), valid (B,) bool).
      n_obs_steps: K.
      n_action_steps: actions executed from each chunk before the next call.
      action_dim: D_a (zero actions replace chunks that did not decode).
    """

    def __init__(self, act: Callable, n_obs_steps: int, n_action_steps: int, action_dim: int):
        self.act, self.k, self.n_action_steps, self.action_dim = act, n_obs_steps, n_action_steps, action_dim
        self.history = None
        self.chunk = None
        self.calls, self.call_seconds, self.invalid, self.decoded = 0, [], 0, 0

    def reset(self, obs: np.ndarray) -> None:
        """obs (B, obs_dim) first observations: the history repeats the first frame (as in training)."""
        self.history = first_history(obs, self.k)
        self.chunk = None

    def observe(self, obs: np.ndarray, mask: np.ndarray) -> None:
        """Appends obs (B, obs_dim) for the environments where mask (B,) is True."""
        rolled = np.concatenate([self.history[:, 1:], np.asarray(obs, np.float32)[:, None]], axis=1)
        self.history = np.where(mask[:, None, None], rolled, self.history)

    def action(self, t: int) -> np.ndarray:
        """Action (B, D_a) float32 of time step t; calls the policy every n_action_steps steps."""
        i = t % self.n_action_steps
        if i == 0 or self.chunk is None:
            clock = Stopwatch()
            actions, valid = self.act(self.history)
            self.call_seconds.append(clock.elapsed())
            self.calls += 1
            actions = np.where(valid[:, None, None], np.nan_to_num(np.asarray(actions, np.float32)), 0.0)
            self.invalid += int(np.sum(~valid))
            self.decoded += len(valid)
            self.chunk = actions
        return self.chunk[:, i]


def run_batched_episodes(envs: Sequence, act: Callable, n_obs_steps: int, n_action_steps: int,
                         max_steps: int) -> dict:
    """Runs one episode in each environment, all in lock-step with one batched policy call per re-plan.

    Args:
      envs: B environments with `reset() -> (obs (obs_dim,), info)` and `step(a (D_a,)) -> (obs, reward,
        terminated, truncated, info)`, info["success"] truthy on success. Actions are clipped to [-1, 1].
      act: see `ChunkExecutor`.
      n_obs_steps, n_action_steps: see `ChunkExecutor`.
      max_steps: step limit of an episode.
    Returns:
      {"success": (B,) bool, "steps": (B,) int64, "calls": int, "call_seconds": [float] (wall time of each policy
      call), "invalid_rate": float (fraction of decoded chunks that were invalid)}.
    """
    first = np.stack([np.asarray(env.reset()[0], np.float32) for env in envs])
    b = len(envs)
    action_dim = int(np.prod(envs[0].action_space.shape)) if hasattr(envs[0], "action_space") else None
    executor = ChunkExecutor(act, n_obs_steps, n_action_steps, action_dim)
    executor.reset(first)
    success, done = np.zeros(b, bool), np.zeros(b, bool)
    steps = np.zeros(b, np.int64)
    obs = first
    for t in range(max_steps):
        if done.all():
            break
        actions = executor.action(t)
        for i, env in enumerate(envs):
            if done[i]:
                continue
            o, _, terminated, truncated, info = env.step(np.clip(actions[i], -1.0, 1.0))
            obs[i] = o
            steps[i] += 1
            success[i] = bool(info.get("success", False))
            done[i] = success[i] or bool(terminated) or bool(truncated)
        executor.observe(obs, ~done)
    return {"success": success, "steps": steps, "calls": executor.calls, "call_seconds": executor.call_seconds,
            "invalid_rate": executor.invalid / max(executor.decoded, 1)}


def make_metaworld_envs(task: str, episodes: int, seed: int) -> list:
    """`episodes` Meta-World v3 environments of `task` on goals 0.. of MT1(task, seed=EVAL_BENCHMARK_SEED + seed)
    (environment e gets goal e mod 50). Needs the optional `metaworld` package (pip install -e .[metaworld])."""
    import metaworld
    benchmark = metaworld.MT1(task, seed=EVAL_BENCHMARK_SEED + seed)
    envs = []
    for e in range(episodes):
        env = benchmark.train_classes[task]()
        env.set_task(benchmark.train_tasks[e % len(benchmark.train_tasks)])
        envs.append(env)
    return envs
