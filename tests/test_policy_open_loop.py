"""Open-loop diagnostics: forcing no token samples as the closed-loop sampler does, forcing all of them reproduces the
tokenizer's own reconstruction, and the reported errors are those of the decoded chunks."""

import jax
import numpy as np
import pytest

from oat_jax.eval import open_loop
from oat_jax.policy.sampling import SamplingConfig
from policy_helpers import random_obs, save_tiny_oat, tiny_policy


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return tiny_policy(save_tiny_oat(str(tmp_path_factory.mktemp("tok") / "oat")), seed=3)


def _chunks(batch, policy, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, policy.tokenizer.horizon)[None, :, None]
    return (np.sin(2 * np.pi * rng.uniform(0.2, 1.0, (batch, 1, policy.tokenizer.action_dim)) * t
                   + rng.uniform(0, 6, (batch, 1, policy.tokenizer.action_dim))) * 0.8).astype(np.float32)


def test_no_forced_token_is_the_closed_loop_sampler(policy):
    obs_raw = random_obs(6, seed=1)
    obs = policy.normalize_observation(obs_raw)
    demo = np.zeros((6, policy.tokenizer.max_tokens), np.int32)
    greedy = SamplingConfig(temperature=0.0)
    ours = open_loop.sample_with_forced_prefix(policy, obs, demo, 0, jax.random.PRNGKey(0), greedy)
    theirs, _ = policy.sampler.__class__(policy.config, greedy)(policy.params, obs, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(ours, np.asarray(theirs))
    sampled = open_loop.sample_with_forced_prefix(policy, obs, demo, 0, jax.random.PRNGKey(5))  # temperature 1
    reference, _ = policy.sampler(policy.params, obs, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(sampled, np.asarray(reference))


def test_forced_tokens_are_kept_and_all_forced_is_the_tokenizer(policy):
    actions = _chunks(8, policy)
    tokens, _ = policy.tokenizer.tokenize(actions)
    obs = policy.normalize_observation(random_obs(8, seed=2))
    n = policy.tokenizer.max_tokens
    two = open_loop.sample_with_forced_prefix(policy, obs, np.asarray(tokens), 2, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(two[:, :2], tokens[:, :2])
    report = open_loop.open_loop_report(policy, actions, random_obs(8, seed=2), forced=(0, n), repeats=1)
    for k in report["tokenizer"]["mse"]:
        assert report["policy"]["mse"][f"f{n}_k{k}"] == pytest.approx(report["tokenizer"]["mse"][k], rel=1e-6)
    # an untrained policy's own tokens decode further from the demonstrations than their own tokens do
    assert report["policy"]["mse"][f"f0_k{n}"] > report["tokenizer"]["mse"][n]
    decoded, _ = policy.tokenizer.detokenize(tokens[:, :1])
    norm = policy.tokenizer.normalizer
    expected = ((np.asarray(norm.normalize(decoded)) - np.asarray(norm.normalize(actions))) ** 2)[:, :4].mean()
    assert report["tokenizer"]["mse_exec"][1] == pytest.approx(float(expected), rel=1e-6)
    assert len(report["teacher_forced"]["accuracy"]) == n and len(report["entropy"]) == n
    # quantiles of the per-pair executed error: all forced = the tokenizer's own per-pair errors
    own = ((np.asarray(norm.normalize(policy.tokenizer.detokenize(tokens)[0])) - np.asarray(norm.normalize(actions)))
           ** 2)[:, :4].mean(axis=(1, 2))
    np.testing.assert_allclose(report["policy"]["exec_quantiles"][f"f{n}_k{n}"], np.quantile(own, [0.5, 0.9]),
                               rtol=1e-5)
    median, p90 = report["policy"]["exec_quantiles"][f"f0_k{n}"]
    assert median <= p90
