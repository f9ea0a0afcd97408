"""The committed Meta-World dataset and the scripted-demonstration generator that made it."""

import collections
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import EMBEDDED_DATASET_DIR, metaworld, statistics

tfds.disable_progress_bar()


def episodes_of(directory):
    """(episode_metadata, steps) per episode; steps: {"action": (T, 4), "observation": {"state": (T, 39)},
    "success": (T,), "is_last": (T,), "language_instruction": (T,) bytes, ...} (steps batched in tf)."""
    builder = tfds.builder_from_directory(directory)
    episodes = builder.as_dataset(split="train", shuffle_files=False).map(
        lambda e: (e["episode_metadata"], e["steps"].batch(100_000).get_single_element()))
    yield from episodes.as_numpy_iterator()


def test_embedded_dataset_is_small_complete_and_successful():
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(EMBEDDED_DATASET_DIR)
               for f in files)
    assert size < 20 * 2**20
    per_task = collections.Counter()
    for metadata, steps in episodes_of(EMBEDDED_DATASET_DIR):
        task = metadata["task"].decode()
        per_task[task] += 1
        assert metadata["success"] and steps["success"][-1] and not steps["success"][:-1].any()
        language = steps["language_instruction"][0].decode()
        assert steps["is_last"][-1] and language == metaworld.task_instruction(task)
        state = steps["observation"]["state"]
        assert state.shape[1:] == (39,) and steps["action"].shape[1:] == (4,)
        assert np.abs(steps["action"]).max() <= 1.0 and np.isfinite(state).all()
    assert set(per_task) == set(metaworld.MT10_TASKS) and set(per_task.values()) == {20}


def test_embedded_dataset_ships_default_statistics():
    # The package directory may be read-only once installed: the default statistics must already be there.
    stats = statistics.get_dataset_statistics(EMBEDDED_DATASET_DIR)
    assert os.path.dirname(stats["cache_path"]) == EMBEDDED_DATASET_DIR
    assert stats["num_episodes"] == 180 and len(stats["action"]["min"]) == 4
    assert min(stats["action"]["min"]) >= -1.0 and max(stats["action"]["max"]) <= 1.0


def test_generator_writes_successful_clipped_demos(tmp_path):
    pytest.importorskip("metaworld")
    output = str(tmp_path / "mw")
    assert metaworld.main(["--tasks=reach-v3", "--episodes_per_task=2", f"--output={output}", "--seed=3"]) == 0
    episodes = list(episodes_of(output))
    assert len(episodes) == 2
    goals = [int(m["goal_index"]) for m, _ in episodes]
    assert len(set(goals)) == 2  # distinct seeded goals
    for metadata, steps in episodes:
        assert metadata["task"] == b"reach-v3" and steps["success"][-1]
        assert steps["observation"]["state"].shape[1:] == (39,) and np.abs(steps["action"]).max() <= 1.0
    goal_positions = [steps["observation"]["state"][0, -3:] for _, steps in episodes]  # last 3 entries: the goal
    assert not np.allclose(goal_positions[0], goal_positions[1])


def test_task_instruction():
    assert metaworld.task_instruction("button-press-topdown-v3") == "button press topdown"
