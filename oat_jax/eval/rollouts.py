"""Batched closed-loop rollouts: observation histories and re-planning for environments stepped in lock-step with
one batched policy call per re-plan (any environments with the gymnasium API), optionally with camera image
histories, and Meta-World v3 evaluation environments (optionally rendering one camera offscreen)."""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

from oat_jax.timing import Stopwatch

PAPER_TASKS = ("box-close-v3", "coffee-pull-v3", "disassemble-v3", "stick-pull-v3")
EVAL_BENCHMARK_SEED = 10_000  # MT1 seed offset of the evaluation goals (demonstrations use 0, 1000, 2000, ...)


def first_history(obs: np.ndarray, n_obs_steps: int) -> np.ndarray:
    """First observations (B, obs_dim) -> history (B, K, obs_dim) float32 repeating them (as in training)."""
    return np.repeat(np.asarray(obs, np.float32)[:, None], n_obs_steps, axis=1)


def first_image_history(images: np.ndarray, n_obs_steps: int) -> np.ndarray:
    """First camera frames (B, cams, h, w, c) -> history (B, K, cams, h, w, c) uint8 repeating them."""
    return np.repeat(np.asarray(images, np.uint8)[:, None], n_obs_steps, axis=1)


def render_camera(env) -> np.ndarray:
    """One camera frame of an environment made with render_mode='rgb_array' (e.g. `make_metaworld_envs(...,
    camera=NAME)`): (1, h, w, 3) uint8 (a camera axis of 1)."""
    return np.asarray(env.render(), np.uint8)[None]


def render_frames(envs: Sequence, image_fn: Callable = render_camera) -> np.ndarray:
    """Camera frames of B environments: (B, cams, h, w, c) uint8 (image_fn: env -> (cams, h, w, c) uint8)."""
    return np.stack([np.asarray(image_fn(env), np.uint8) for env in envs])


def offscreen_render_kwargs(camera: str, image_size: int) -> dict:
    """Constructor arguments of a MuJoCo (gymnasium `MujocoEnv`) environment rendering `camera` offscreen as
    (image_size, image_size, 3) uint8 frames; {} when camera is '' (no rendering).

    Without a display MuJoCo needs a headless OpenGL backend: MUJOCO_GL defaults to 'egl' here (Mesa's software
    EGL works on CPU-only machines; 'osmesa' and 'glfw' need libraries or a display). It is read when the first
    renderer is created, so a value set by the user beforehand wins."""
    if not camera:
        return {}
    if image_size < 1:
        raise ValueError(f"image_size={image_size} must be >= 1.")
    os.environ.setdefault("MUJOCO_GL", "egl")
    return {"render_mode": "rgb_array", "camera_name": camera, "width": int(image_size), "height": int(image_size)}


class ChunkExecutor:
    """Observation histories and re-planning for B environments stepped in lock-step.

    Without images (the default) the policy is called with the state history array; after `reset(obs, images)`
    with images it is called with the dict {"state": (B, K, obs_dim) float32, "image": (B, K, cams, h, w, c) uint8}.

    Args:
      act: (B, K, obs_dim) float32 raw observation histories (or the dict above) -> (actions (B, H, D_a),
        valid (B,) bool).
      n_obs_steps: K.
      n_action_steps: actions executed from each chunk before the next call.
      action_dim: D_a (zero actions replace chunks that did not decode).
    """

    def __init__(self, act: Callable, n_obs_steps: int, n_action_steps: int, action_dim: int):
        self.act, self.k, self.n_action_steps, self.action_dim = act, n_obs_steps, n_action_steps, action_dim
        self.history = None
        self.image_history = None
        self.chunk = None
        self.calls, self.call_seconds, self.invalid, self.decoded = 0, [], 0, 0

    def reset(self, obs: np.ndarray, images: Optional[np.ndarray] = None) -> None:
        """obs (B, obs_dim) first observations, images (B, cams, h, w, c) uint8 their camera frames (None: a
        state-only policy): the histories repeat the first frame (as in training)."""
        self.history = first_history(obs, self.k)
        self.image_history = None if images is None else first_image_history(images, self.k)
        self.chunk = None

    def observe(self, obs: np.ndarray, mask: np.ndarray, images: Optional[np.ndarray] = None) -> None:
        """Appends obs (B, obs_dim) (and images (B, cams, h, w, c) uint8 when reset with images) for the
        environments where mask (B,) is True."""
        rolled = np.concatenate([self.history[:, 1:], np.asarray(obs, np.float32)[:, None]], axis=1)
        self.history = np.where(mask[:, None, None], rolled, self.history)
        if self.image_history is not None:
            if images is None:
                raise ValueError("ChunkExecutor was reset with images: observe() needs the new frames too.")
            new = np.asarray(images, np.uint8)[:, None]
            keep = mask.reshape((-1,) + (1,) * (self.image_history.ndim - 1))
            self.image_history = np.where(keep, np.concatenate([self.image_history[:, 1:], new], axis=1),
                                          self.image_history)

    def observation(self):
        """The policy input: the state history (B, K, obs_dim) float32, or with images {"state", "image"}."""
        if self.image_history is None:
            return self.history
        return {"state": self.history, "image": self.image_history}

    def action(self, t: int) -> np.ndarray:
        """Action (B, D_a) float32 of time step t; calls the policy every n_action_steps steps."""
        i = t % self.n_action_steps
        if i == 0 or self.chunk is None:
            clock = Stopwatch()
            actions, valid = self.act(self.observation())
            self.call_seconds.append(clock.elapsed())
            self.calls += 1
            actions = np.where(valid[:, None, None], np.nan_to_num(np.asarray(actions, np.float32)), 0.0)
            self.invalid += int(np.sum(~valid))
            self.decoded += len(valid)
            self.chunk = actions
        return self.chunk[:, i]


def run_batched_episodes(envs: Sequence, act: Callable, n_obs_steps: int, n_action_steps: int,
                         max_steps: int, image_fn: Optional[Callable] = None) -> dict:
    """Runs one episode in each environment, all in lock-step with one batched policy call per re-plan.

    Args:
      envs: B environments with `reset() -> (obs (obs_dim,), info)` and `step(a (D_a,)) -> (obs, reward,
        terminated, truncated, info)`, info["success"] truthy on success. Actions are clipped to [-1, 1].
      act: see `ChunkExecutor`.
      n_obs_steps, n_action_steps: see `ChunkExecutor`.
      max_steps: step limit of an episode.
      image_fn: env -> (cams, h, w, c) uint8 camera frames of its current state (e.g. `render_camera`); given, the
        policy gets image histories too (see `ChunkExecutor`); frames are rendered only for running episodes.
    Returns:
      {"success": (B,) bool, "steps": (B,) int64, "calls": int, "call_seconds": [float] (wall time of each policy
      call), "invalid_rate": float (fraction of decoded chunks that were invalid)}.
    """
    first = np.stack([np.asarray(env.reset()[0], np.float32) for env in envs])
    b = len(envs)
    action_dim = int(np.prod(envs[0].action_space.shape)) if hasattr(envs[0], "action_space") else None
    executor = ChunkExecutor(act, n_obs_steps, n_action_steps, action_dim)
    images = None if image_fn is None else render_frames(envs, image_fn)
    executor.reset(first, images)
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
            if images is not None and not done[i]:
                images[i] = image_fn(env)
        executor.observe(obs, ~done, images)
    return {"success": success, "steps": steps, "calls": executor.calls, "call_seconds": executor.call_seconds,
            "invalid_rate": executor.invalid / max(executor.decoded, 1)}


def task_instruction(task: str) -> str:
    """The instruction of a Meta-World task as the demonstration datasets store it: 'button-press-topdown-v3' ->
    'button press topdown' (the words of the name without its version)."""
    return " ".join(part for part in task.split("-") if not (part.startswith("v") and part[1:].isdigit()))


def make_metaworld_envs(task: str, episodes: int, seed: int, camera: str = "", image_size: int = 64) -> list:
    """`episodes` Meta-World v3 environments of `task` on goals 0.. of MT1(task, seed=EVAL_BENCHMARK_SEED + seed)
    (environment e gets goal e mod 50). Needs the optional `metaworld` package (pip install -e .[metaworld]).

    camera: '' (no rendering) or a Meta-World camera ('corner', 'corner2', 'corner3', 'corner4', 'topview',
      'behindGripper', 'gripperPOV'): `env.render()` / `render_camera(env)` then give (image_size, image_size, 3)
      uint8 frames of it (see `offscreen_render_kwargs`; close the environments when done to free the OpenGL
      contexts)."""
    import metaworld
    benchmark = metaworld.MT1(task, seed=EVAL_BENCHMARK_SEED + seed)
    render = offscreen_render_kwargs(camera, image_size)
    envs = []
    for e in range(episodes):
        env = benchmark.train_classes[task](**render)
        env.set_task(benchmark.train_tasks[e % len(benchmark.train_tasks)])
        envs.append(env)
    return envs
