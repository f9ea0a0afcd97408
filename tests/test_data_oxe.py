"""Open X-Embodiment layouts from the command line, offline: an RT-1-layout dataset (dict action, integer fields,
instruction in the observation) trains by name + data_dir with its 7-D action composed from the dict; action_keys
picks a subset; an OpenVLA-LIBERO layout (vector action) trains by name; an unknown dict layout names its fields
and the flag."""

import os
import subprocess

import numpy as np
import pytest
import tensorflow_datasets as tfds

import train_helpers
from data_pipelines import oxe, rlds_reader
from oat_jax.training.tokenizer import trainer
from train_helpers import compilation_cache  # noqa: F401  (pytest fixture)

T = 10


def _store(data_dir, name, version, features, examples):
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=version, features=tfds.features.FeaturesDict(features),
        split_datasets={"train": examples}, data_dir=data_dir, disable_shuffling=True)
    return str(builder.data_dir)


def write_rt1_layout(data_dir, name="fractal20220817_data", episodes=8, seed=0):
    """Episodes with RT-1's step layout (a subset of its observation); returns the per-episode composed actions."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    action = {"world_vector": tfds.features.Tensor(shape=(3,), dtype=f32),
              "rotation_delta": tfds.features.Tensor(shape=(3,), dtype=f32),
              "gripper_closedness_action": tfds.features.Tensor(shape=(1,), dtype=f32),
              "terminate_episode": tfds.features.Tensor(shape=(3,), dtype=np.int32),
              "base_displacement_vector": tfds.features.Tensor(shape=(2,), dtype=f32),
              "base_displacement_vertical_rotation": tfds.features.Tensor(shape=(1,), dtype=f32)}
    steps = {"action": tfds.features.FeaturesDict(action),
             "observation": tfds.features.FeaturesDict({
                 "natural_language_instruction": tfds.features.Text(),
                 "base_pose_tool_reached": tfds.features.Tensor(shape=(7,), dtype=f32)}),
             "is_first": tfds.features.Scalar(dtype=np.bool_), "is_last": tfds.features.Scalar(dtype=np.bool_),
             "is_terminal": tfds.features.Scalar(dtype=np.bool_), "reward": tfds.features.Scalar(dtype=f32)}
    composed, examples = [], []
    for e in range(episodes):
        wv, rd = rng.uniform(-1, 1, (T, 3)).astype(f32), rng.uniform(-0.5, 0.5, (T, 3)).astype(f32)
        grip = rng.choice([-1.0, 0.0, 1.0], (T, 1)).astype(f32)
        composed.append(np.concatenate([wv, rd, grip], 1))
        examples.append((str(e), {"steps": [{
            "action": {"world_vector": wv[t], "rotation_delta": rd[t], "gripper_closedness_action": grip[t],
                       "terminate_episode": np.array([0, 1, 0], np.int32),
                       "base_displacement_vector": np.zeros(2, f32),
                       "base_displacement_vertical_rotation": np.zeros(1, f32)},
            "observation": {"natural_language_instruction": "pick coke can",
                            "base_pose_tool_reached": np.zeros(7, f32)},
            "is_first": t == 0, "is_last": t == T - 1, "is_terminal": t == T - 1, "reward": 0.0}
            for t in range(T)]}))
    _store(data_dir, name, "0.1.0", {"steps": tfds.features.Dataset(steps)}, examples)
    return composed


def write_libero_layout(data_dir, name="libero_10_no_noops", episodes=8, seed=1):
    rng = np.random.default_rng(seed)
    steps = {"action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
             "observation": tfds.features.FeaturesDict({"state": tfds.features.Tensor(shape=(8,), dtype=np.float32)}),
             "language_instruction": tfds.features.Text(), "is_first": tfds.features.Scalar(dtype=np.bool_),
             "is_last": tfds.features.Scalar(dtype=np.bool_), "is_terminal": tfds.features.Scalar(dtype=np.bool_)}
    examples = [(str(e), {"steps": [{"action": rng.uniform(-1, 1, 7).astype(np.float32),
                                     "observation": {"state": np.zeros(8, np.float32)},
                                     "language_instruction": "put the bowl on the plate", "is_first": t == 0,
                                     "is_last": t == T - 1, "is_terminal": t == T - 1} for t in range(T)]})
                for e in range(episodes)]
    _store(data_dir, name, "1.0.0", {"steps": tfds.features.Dataset(steps)}, examples)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    composed = write_rt1_layout(d)
    write_rt1_layout(d, name="my_robot_dict_actions")  # same dict layout, not registered
    write_libero_layout(d)
    rlds_reader._open_builder.cache_clear()
    return d, composed


def test_rt1_action_is_composed_from_the_dict_in_registry_order(data_dir):
    d, composed = data_dir
    spec = oxe.spec_for("fractal20220817_data", d)
    assert spec.action_keys == ("world_vector", "rotation_delta", "gripper_closedness_action")
    trajs = list(rlds_reader.read_trajectories(spec, np.arange(len(composed)), with_language=True)
                 .as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([t["actions"] for t in trajs]), np.stack(composed))
    assert trajs[0]["language"][0] == b"pick coke can"
    subset = oxe.spec_for("fractal20220817_data", d, action_keys="world_vector,terminate_episode")
    first = next(rlds_reader.read_trajectories(subset, [0]).as_numpy_iterator())["actions"]
    assert first.shape == (T, 6) and first.dtype == np.float32 and first[0, 3:].tolist() == [0.0, 1.0, 0.0]


def test_train_by_name_from_the_cli_offline(data_dir, tmp_path):
    d, _ = data_dir
    workdir = str(tmp_path / "run")
    cmd = [c for c in train_helpers.train_command(workdir, "", "--config.data.name=fractal20220817_data",
                                                   f"--config.data.data_dir={d}", "--config.data.val_fraction=0.25")
           if c != "--config.data.path="]
    env = train_helpers.subprocess_env(num_devices=1)
    env.pop("TFDS_DATA_DIR", None)
    result = subprocess.run(cmd, cwd=train_helpers.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from oat_jax import OATTokenizer
    assert OATTokenizer.load(workdir).action_dim == 7


def test_subset_libero_layout_and_unknown_dict_layout(data_dir, tmp_path, compilation_cache):  # noqa: F811
    d, _ = data_dir
    config = train_helpers.tiny_config("", **{"data.name": "fractal20220817_data", "data.data_dir": d,
                                              "data.val_fraction": 0.25,
                                              "data.action_keys": "world_vector,gripper_closedness_action"})
    trainer.train_and_evaluate(config, str(tmp_path / "subset"))
    from oat_jax import OATTokenizer
    assert OATTokenizer.load(str(tmp_path / "subset")).action_dim == 4
    libero = train_helpers.tiny_config("", **{"data.name": "libero_10_no_noops", "data.data_dir": d,
                                              "data.val_fraction": 0.25})
    trainer.train_and_evaluate(libero, str(tmp_path / "libero"))
    assert OATTokenizer.load(str(tmp_path / "libero")).action_dim == 7
    unknown = train_helpers.tiny_config("", **{"data.name": "my_robot_dict_actions", "data.data_dir": d})
    with pytest.raises(ValueError, match=r"is a dict with fields .*world_vector.*--config\.data\.action_keys="):
        trainer.train_and_evaluate(unknown, str(tmp_path / "unknown"))
    assert os.path.isdir(d)
