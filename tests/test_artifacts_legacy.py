"""Artifacts written in the first on-disk layout (tests/fixtures/legacy_v1, see its README) still load and give
the outputs recorded when they were written: a tokenizer directory, a training workdir's checkpoint (rebuilt from
the run config and statistics) and its tokenizer/, a policy directory, and a policy run that resumes."""

import os
import shutil

import jax
import numpy as np
import pytest

from oat_jax import OATTokenizer, artifacts
from oat_jax.action_tokenizers import load_action_tokenizer
from oat_jax.policy.policy import TokenPolicy

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "legacy_v1")


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(FIXTURES, "expected.npz")))


@pytest.mark.parametrize("name,path,step", [("tokenizer", "tokenizer", None), ("checkpoint", "tokenizer_run", 4),
                                            ("checkpoint", "tokenizer_run/checkpoints/4", None),
                                            ("run_tokenizer", "tokenizer_run", None)])
def test_first_layout_tokenizers_give_the_recorded_outputs(expected, name, path, step):
    tok = OATTokenizer.load(os.path.join(FIXTURES, path), step)
    tokens, _ = tok.tokenize(expected["actions"])
    np.testing.assert_array_equal(tokens, expected[f"{name}_tokens"])
    for k in range(1, tok.num_tokens + 1):
        recon, valid = tok.detokenize(tokens, np.full(len(tokens), k))
        assert valid.all()
        np.testing.assert_allclose(recon, expected[f"{name}_decoded"][k - 1], rtol=1e-5, atol=1e-6)
    assert type(load_action_tokenizer(os.path.join(FIXTURES, path), step)) is OATTokenizer


def test_first_layout_policy_directory_acts_as_recorded(expected):
    policy = TokenPolicy.load(os.path.join(FIXTURES, "policy_run"))
    actions, valid = policy.act({"state": expected["policy_obs"]}, jax.random.PRNGKey(7))
    assert valid.all()
    np.testing.assert_allclose(actions, expected["policy_actions"], rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="policy checkpoint"):
        OATTokenizer.load(os.path.join(FIXTURES, "policy_run"), step=2)


def test_first_layout_policy_checkpoint_unpacks_its_tokenizer_once(tmp_path):
    run = shutil.copytree(os.path.join(FIXTURES, "policy_run"), tmp_path / "run")
    meta, tokenizer_dir = artifacts.policy_run_assets(str(run), 2)
    assert tokenizer_dir == os.path.join(run, artifacts.WORKDIR_FROZEN_TOKENIZER)
    assert set(meta) == {"obs_normalizers"} and "state" in meta["obs_normalizers"]
    reference = OATTokenizer.load(os.path.join(FIXTURES, "tokenizer"))
    assert load_action_tokenizer(tokenizer_dir).config == reference.config
    assert artifacts.policy_run_assets(str(run), 2)[1] == tokenizer_dir  # the copy is reused
