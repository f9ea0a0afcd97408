"""Shared pieces of the training tests: a tiny RLDS dataset, the tiny 'test' config, subprocess launching."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_pipelines import rlds_writer
from experiments.configs import oat as oat_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EPISODES, EPISODE_LEN, ACTION_DIM = 12, 30, 3


def write_tiny_dataset(directory: str) -> str:
    """12 episodes x 30 steps of smooth 3-D actions (random sinusoids, different ranges per dimension) as RLDS."""
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 1.0, EPISODE_LEN)[:, None]
    episodes = []
    for i in range(NUM_EPISODES):
        amp = rng.uniform(0.3, 1.0, ACTION_DIM) * np.array([1.0, 5.0, 0.2])
        freq, phase = rng.uniform(0.3, 1.5, ACTION_DIM), rng.uniform(0, 6.3, ACTION_DIM)
        action = (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)
        episodes.append(rlds_writer.Episode(source=f"synthetic episode {i}", action=action,
                                            observation={"state": np.cumsum(action, 0)}, language="", extras={},
                                            metadata={}))
    return rlds_writer.write_rlds(episodes, os.path.join(directory, "tiny_rlds"), name="tiny_rlds")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of the tiny RLDS dataset, written once per test session (per xdist worker)."""
    return write_tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """Persistent XLA compilation cache for the session: every training run builds fresh jitted closures, so
    without it identical programs would be compiled again in each test."""
    options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")
    previous = {k: getattr(jax.config, k) for k in options}
    for k, v in zip(options, (str(tmp_path_factory.mktemp("jax_cache")), 0, 0)):
        jax.config.update(k, v)
    yield
    for k, v in previous.items():
        jax.config.update(k, v)


def tiny_config(data_path: str, variant: str = "test", **overrides):
    """The 'test' config on the tiny dataset; `overrides` maps 'section.field' -> value."""
    config = oat_configs.get_config(variant)
    config.data.path = data_path
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def subprocess_env(num_devices: int = 8, cache_dir: str | None = None) -> dict:
    """Environment of a training subprocess: CPU only, `num_devices` simulated devices, optional compile cache.
    LLVM optimisation is turned down: compiling dominates these short runs."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices} --xla_backend_optimization_level=0"
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    if cache_dir:
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def train_command(workdir: str, data_path: str, *flags: str, config: str = "oat.py:test") -> list[str]:
    """`python -m experiments.train` with experiments/configs/`config` (default the tokenizer's 'test' config) on
    the dataset at `data_path` plus extra `--config.*` flags."""
    return [sys.executable, "-m", "experiments.train", f"--config={REPO}/experiments/configs/{config}",
            f"--workdir={workdir}", f"--config.data.path={data_path}", *flags]


def popen(cmd: list[str], env: dict, log_path: str) -> subprocess.Popen:
    """Starts `cmd` in the repo root with stdout+stderr to `log_path`."""
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def read_log(path: str) -> str:
    with open(path) as f:
        return f.read()


def free_port() -> int:
    """A free localhost TCP port (the coordinator of a multi-process test)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_losses(workdir: str) -> list[float]:
    """The logged training losses of a run, in step order."""
    from oat_jax.training.metrics import read_metrics
    return [r["train/loss"] for r in sorted(read_metrics(workdir), key=lambda r: r["step"]) if "train/loss" in r]
