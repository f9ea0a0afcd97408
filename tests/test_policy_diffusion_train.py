"""Diffusion Policy training and persistence: `experiments/configs/policy.py:dp` trains through the policy entry
point, the EMA policy saves and reloads with identical actions, a checkpoint step loads, sampling is deterministic
under a fixed key, and the loaders tell the two policy kinds apart."""

import json
import os

import jax
import numpy as np
import pytest

from train_helpers import ACTION_DIM, tiny_dataset  # noqa: F401  (session fixture)

from experiments.configs import policy as policy_configs
from oat_jax.policy import load_policy
from oat_jax.policy.diffusion_policy import DiffusionPolicy
from oat_jax.policy.policy import TokenPolicy
from oat_jax.training.policy.diffusion_trainer import train_and_evaluate


@pytest.fixture(scope="module")
def dp_run(tiny_dataset, tmp_path_factory):  # noqa: F811
    config = policy_configs.get_config("dp,test")
    config.data.path = tiny_dataset
    workdir = str(tmp_path_factory.mktemp("dp") / "run")
    metrics = train_and_evaluate(config, workdir)
    return config, workdir, metrics


def _obs(config, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(batch, config.data.n_obs_steps, ACTION_DIM)).astype(np.float32)}


def test_dp_config_trains_and_writes_a_loadable_policy(dp_run, tmp_path):
    config, workdir, metrics = dp_run
    assert config.policy.type == "diffusion"
    assert np.isfinite(metrics["val_loss"]) and np.isfinite(metrics["val_sample_mse"])
    with open(os.path.join(workdir, "final_metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["step"] == config.train.num_steps
    assert not os.path.exists(os.path.join(workdir, "frozen_tokenizer"))  # no tokenizer anywhere
    policy = DiffusionPolicy.load(workdir)
    assert isinstance(load_policy(workdir), DiffusionPolicy)
    assert (policy.horizon, policy.action_dim, policy.n_action_steps) == (8, ACTION_DIM, 4)
    obs, key = _obs(config), jax.random.PRNGKey(3)
    actions, valid = policy.act(obs, key)
    assert actions.shape == (3, 8, ACTION_DIM) and actions.dtype == np.float32 and valid.all()
    np.testing.assert_array_equal(actions, policy.act(obs, key)[0])  # deterministic under a fixed key
    assert not np.allclose(actions, policy.act(obs, jax.random.PRNGKey(4))[0])
    # samples stay inside the training actions' range (clipped in [-1, 1] normalized units)
    low, high = policy.action_normalizer.unnormalize(-np.ones(ACTION_DIM)), policy.action_normalizer.unnormalize(
        np.ones(ACTION_DIM))
    assert np.all(actions >= low - 1e-4) and np.all(actions <= high + 1e-4)
    # save -> load -> identical actions, for the default and another number of DDIM steps
    again = DiffusionPolicy.load(policy.save(str(tmp_path / "saved")))
    np.testing.assert_array_equal(again.act(obs, key)[0], actions)
    np.testing.assert_array_equal(again.act(obs, key, num_inference_steps=3)[0],
                                  policy.act(obs, key, num_inference_steps=3)[0])
    # the last checkpoint step holds the same EMA params as the exported policy
    np.testing.assert_array_equal(DiffusionPolicy.load(workdir, step="latest").act(obs, key)[0], actions)


def test_policy_loaders_name_the_other_kind(dp_run):
    config, workdir, _ = dp_run
    with pytest.raises(ValueError, match="TokenPolicy|token policy|load_policy"):
        TokenPolicy.load(workdir)
    with pytest.raises(ValueError, match="no tokens"):
        DiffusionPolicy.load(workdir).act(_obs(config), jax.random.PRNGKey(0), num_tokens=4)
