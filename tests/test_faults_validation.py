"""Fault injection, evaluation data: a NaN action in a held-out episode is a clear error before training, and a
non-finite held-out metric stops the run without a checkpoint of that step (so it is never the 'best')."""

import dataclasses
import os

import numpy as np
import pytest

import train_helpers
from data_pipelines import rlds_writer, splits
from oat_jax.training.tokenizer import trainer
from oat_jax.training.faults import NonFiniteLossError
from train_helpers import compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)


def _dataset_with_nan_in_a_val_episode(directory, monkeypatch):
    val_ids = splits.split_episode_ids(train_helpers.NUM_EPISODES, "val", 0.1, 0)
    rng = np.random.default_rng(1)
    episodes = []
    for i in range(train_helpers.NUM_EPISODES):
        action = rng.uniform(-1, 1, (train_helpers.EPISODE_LEN, 3)).astype(np.float32)
        if i == int(val_ids[0]):
            action[5, 1] = np.nan  # a dataset written elsewhere can carry one
        episodes.append(rlds_writer.Episode(source=f"episode {i}", action=action,
                                            observation={"state": np.zeros_like(action)}, language="", extras={},
                                            metadata={}))
    real = rlds_writer.validate_episode  # the writer refuses NaN: validate a NaN-free copy instead
    monkeypatch.setattr(rlds_writer, "validate_episode", lambda episode, reference=None: real(
        dataclasses.replace(episode, action=np.nan_to_num(episode.action)), reference))
    path = rlds_writer.write_rlds(episodes, os.path.join(directory, "nan_val"), name="nan_val")
    monkeypatch.undo()
    return path, int(val_ids[0])


def test_nan_in_a_validation_episode_is_an_error_naming_it(tmp_path, monkeypatch, compilation_cache):  # noqa: F811
    path, episode = _dataset_with_nan_in_a_val_episode(str(tmp_path), monkeypatch)
    config = train_helpers.tiny_config(path, **{"data.val_fraction": 0.1, "data.split_seed": 0})
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=rf"'val' split have NaN/Inf actions \(episode ids \[{episode}\]\)"):
        trainer.train_and_evaluate(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints")) or not any(
        d.isdigit() for d in os.listdir(os.path.join(workdir, "checkpoints")))


def test_non_finite_held_out_metric_stops_without_a_best_checkpoint(tmp_path, monkeypatch, tiny_dataset,  # noqa: F811
                                                                    compilation_cache):  # noqa: F811
    real = trainer.held_out_metrics
    calls = []

    def held_out_metrics(*args):
        metrics = real(*args)
        calls.append(1)
        if len(calls) >= 2:  # the second evaluation goes NaN
            metrics = {k: (float("nan") if "mse" in k else v) for k, v in metrics.items()}
        return metrics

    monkeypatch.setattr(trainer, "held_out_metrics", held_out_metrics)
    config = train_helpers.tiny_config(tiny_dataset, **{"train.num_steps": 8, "train.eval_every": 2,
                                                        "checkpoint.every": 2})
    workdir = str(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="NaN/Inf at step 4"):
        trainer.train_and_evaluate(config, workdir)
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert 4 not in steps and max(steps) <= 2
    assert not os.path.exists(os.path.join(workdir, "final_metrics.json"))


def test_a_run_in_another_run_kinds_workdir_is_refused_naming_it(tmp_path, tiny_dataset, compilation_cache):  # noqa: F811
    """A policy run started in a tokenizer run's workdir (or the other way round) is one error naming the workdir,
    not a missing checkpoint item."""
    from experiments.configs import policy as policy_configs
    from oat_jax.training.policy.trainer import train_and_evaluate as train_policy

    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(train_helpers.tiny_config(tiny_dataset), workdir)
    config = policy_configs.get_config("oat,test")
    config.data.path, config.tokenizer.path = tiny_dataset, workdir
    with pytest.raises(ValueError, match=r"holds a tokenizer run .*a policy run cannot resume from it"):
        train_policy(config, workdir)


def test_nan_in_an_observation_is_an_error_naming_the_dataset_and_episode(tmp_path, monkeypatch):
    """A NaN in a state the policy would read is found when the pairs load: the error names the dataset, the
    split, the observation and the episode (not 'NaN actions' from a normalizer fit)."""
    from experiments.configs import policy as policy_configs
    from oat_jax.training.policy import data as policy_data

    rng = np.random.default_rng(2)
    episodes = []
    for i in range(train_helpers.NUM_EPISODES):
        action = rng.uniform(-1, 1, (train_helpers.EPISODE_LEN, 3)).astype(np.float32)
        state = np.cumsum(action, 0)
        if i == 4:
            state[7, 0] = np.inf
        episodes.append(rlds_writer.Episode(source=f"episode {i}", action=action, observation={"state": state},
                                            language="", extras={}, metadata={}))
    real = rlds_writer.validate_episode  # the writer refuses non-finite values: validate a clean copy instead
    monkeypatch.setattr(rlds_writer, "validate_episode", lambda episode, reference=None: real(
        dataclasses.replace(episode, observation={"state": np.nan_to_num(episode.observation["state"])}), reference))
    path = rlds_writer.write_rlds(episodes, os.path.join(str(tmp_path), "inf_state"), name="inf_state")
    monkeypatch.undo()
    config = policy_configs.get_config("oat,test")
    config.data.path, config.data.val_fraction = path, 0.0
    with pytest.raises(ValueError, match=r"inf_state .*episode\(s\) \[4\] of the 'train' split have NaN/Inf "
                                         r"state observations"):
        policy_data.load_pairs(config.data, "train", 8, 2)
    with pytest.raises(ValueError, match=r"inf_state .*episode\(s\) \[4\] of the 'train' split have NaN/Inf "
                                         r"state observations"):  # the normalizer's frames are checked too
        policy_data.fit_normalizers(config.data, "gaussian")


def test_finite_but_huge_actions_are_an_error_naming_the_episode(tmp_path, monkeypatch):
    """Actions of 3e38 are finite but their squared errors overflow: refused when the chunks load, naming the
    dataset and episode, instead of a 'non-finite held-out metric' later."""
    from oat_jax.training import data

    rng = np.random.default_rng(3)
    episodes = []
    for i in range(train_helpers.NUM_EPISODES):
        action = rng.uniform(-1, 1, (train_helpers.EPISODE_LEN, 3)).astype(np.float32)
        if i == 2:
            action[3, 2] = 3e38
        episodes.append(rlds_writer.Episode(source=f"episode {i}", action=action,
                                            observation={"state": np.zeros_like(action)}, language="", extras={},
                                            metadata={}))
    path = rlds_writer.write_rlds(episodes, os.path.join(str(tmp_path), "huge"), name="huge")
    config = train_helpers.tiny_config(path, **{"data.val_fraction": 0.0})
    spec = data.dataset_spec(config.data)
    with pytest.raises(ValueError, match=r"huge .*magnitude up to 3e\+38 \(episode ids \[2\]\).*overflow float32"):
        data.load_chunks(spec, config.data, "train", 8)
