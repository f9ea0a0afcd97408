"""TokenPolicy: OAT_k actions for every k, self-contained save/load, input validation."""

import os
import shutil

import jax
import numpy as np
import pytest

from policy_helpers import random_obs, save_tiny_oat, tiny_policy

from oat_jax.policy.policy import TokenPolicy


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_tiny_oat(str(tmp_path_factory.mktemp("tok") / "oat"))


def test_oat_k_policies_return_action_chunks_for_every_k(tokenizer_dir):
    policy = tiny_policy(tokenizer_dir)
    obs = random_obs(5)
    chunks = {}
    policy.act(obs, jax.random.PRNGKey(0), 1)
    traces = policy.sampler.trace_count
    for k in range(1, policy.config.max_tokens + 1):
        tokens, lengths = policy.sample_tokens(obs, jax.random.PRNGKey(0), k)
        assert tokens.shape == (5, policy.config.max_tokens) and np.all(lengths == k)
        actions, valid = policy.act(obs, jax.random.PRNGKey(0), k)
        assert actions.shape == (5, policy.horizon, policy.action_dim) and actions.dtype == np.float32
        assert valid.all() and np.all(np.isfinite(actions))
        chunks[k] = actions
    # same key: the k-token prefix is the first k tokens of the full sequence, and the decodes differ with k
    assert not np.allclose(chunks[1], chunks[policy.config.max_tokens])
    assert policy.sampler.trace_count == traces  # every k reuses the compiled sampler


def test_policy_reloads_and_acts_without_the_tokenizer_workdir(tokenizer_dir, tmp_path):
    moved = shutil.copytree(tokenizer_dir, str(tmp_path / "tok_original"))
    policy = tiny_policy(moved)
    obs = random_obs(3)
    expected, _ = policy.act(obs, jax.random.PRNGKey(7), 2)
    saved = policy.save(str(tmp_path / "run" / "policy"))
    shutil.rmtree(moved)  # the tokenizer's original directory is gone
    assert not os.path.exists(moved)
    for path in (saved, str(tmp_path / "run")):  # the policy dir, or the workdir holding policy/
        loaded = TokenPolicy.load(path)
        actions, valid = loaded.act(obs, jax.random.PRNGKey(7), 2)
        np.testing.assert_allclose(actions, expected, atol=1e-6)
        assert valid.all() and loaded.n_action_steps == policy.n_action_steps


def test_policy_validates_inputs(tokenizer_dir, tmp_path):
    policy = tiny_policy(tokenizer_dir)
    with pytest.raises(ValueError, match="obs\\['state'\\] must have shape"):
        policy.act(random_obs(2, obs_dim=10), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="num_tokens"):
        policy.act(random_obs(2), jax.random.PRNGKey(0), policy.config.max_tokens + 1)
    with pytest.raises(ValueError, match="does not match the policy config"):
        TokenPolicy(policy.config.replace(vocab_size=7), policy.params, policy.tokenizer, policy.obs_normalizers)
    with pytest.raises(FileNotFoundError, match="No saved policy"):
        TokenPolicy.load(str(tmp_path))


def test_a_state_normalizer_of_another_size_is_refused_when_the_policy_is_built(tokenizer_dir):
    """A policy.json whose normalizer and config disagree fails at load time, naming both sizes."""
    from oat_jax.normalizer import Normalizer

    policy = tiny_policy(tokenizer_dir)
    with pytest.raises(ValueError, match=r"state normalizer has 5 dimensions but the policy config's obs_dim is 39"):
        TokenPolicy(policy.config, policy.params, policy.tokenizer, {"state": Normalizer.identity(5)},
                    n_action_steps=policy.n_action_steps)


@pytest.mark.parametrize("k", [2.5, True, float("nan"), "2"])
def test_num_tokens_that_is_not_a_whole_number_is_an_error(tokenizer_dir, k):
    policy = tiny_policy(tokenizer_dir)
    with pytest.raises(ValueError, match="num_tokens must be a whole number"):
        policy.act(random_obs(1), jax.random.PRNGKey(0), k)
    assert policy.act(random_obs(1), jax.random.PRNGKey(0), 2.0)[0].shape[0] == 1  # 2.0 is 2
