"""Fault injection, inputs: values that are not finite in float32 are refused after the cast, bfloat16 works, and
exported artifacts validate their inputs like OATTokenizer (ids out of range: an error for the exported
artifact, an invalid example for OATTokenizer.detokenize)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oat_jax import OATTokenizer
from oat_jax.config import OATConfig
from oat_jax.serialization import ExportedTokenizer, export_tokenizer

CONFIG = OATConfig(action_dim=2, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=16, enc_depth=1, enc_heads=2,
                   dec_width=16, dec_depth=1, dec_heads=2, dec_ffn_dim=32)


@pytest.fixture(scope="module")
def tok():
    return OATTokenizer.init(CONFIG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    return ExportedTokenizer(export_tokenizer(tok, str(tmp_path_factory.mktemp("exp")), batch_sizes=(2,)))


def _actions(dtype=np.float64):
    return np.random.default_rng(0).uniform(-1, 1, (2, 8, 2)).astype(dtype)


def test_float64_beyond_float32_range_is_refused_not_zeroed(tok, exported):
    x = _actions()
    x[1, 3, 0] = 1e300
    for t in (tok, exported):
        with pytest.raises(ValueError, match=r"1 of them finite float64 values beyond float32's range"):
            t.tokenize(x)


def test_bfloat16_actions_tokenize_like_their_float32_values(tok, exported):
    x = jnp.asarray(_actions(np.float32), jnp.bfloat16)
    expected = tok.tokenize(np.asarray(x.astype(jnp.float32)))[0]
    np.testing.assert_array_equal(tok.tokenize(x)[0], expected)
    np.testing.assert_array_equal(exported.tokenize(x), expected)


@pytest.mark.parametrize("lengths,match", [(0, "out of range"), (-1, "out of range"), (9, "out of range"),
                                           (np.array([2.7, 1.0]), "must be integers")])
def test_exported_detokenize_rejects_bad_lengths(exported, lengths, match):
    tokens = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match=match):
        exported.detokenize(tokens, lengths)


def test_exported_rejects_nan_chunks_and_bad_ids_the_tokenizer_flags_invalid(tok, exported):
    x = _actions(np.float32)
    x[0, 0, 0] = np.nan
    for t in (tok, exported):
        with pytest.raises(ValueError, match="1 NaN"):
            t.tokenize(x)
    bad = np.array([[0, 1, 2, tok.vocab_size], [0, 0, 0, 0]], np.int32)
    with pytest.raises(ValueError, match="token ids must be in"):
        exported.detokenize(bad)
    actions, valid = tok.detokenize(bad)
    np.testing.assert_array_equal(valid, [False, True])
    assert np.all(np.isnan(actions[0])) and np.all(np.isfinite(actions[1]))
    np.testing.assert_allclose(actions[1], exported.detokenize(bad[1:].repeat(2, 0))[0], atol=1e-5)
    good = np.array([[5, 1, 2, 3], [0, 0, 0, 0]], np.int32)
    good_actions, good_valid = tok.detokenize(good[:, :2])
    assert good_valid.all()
    np.testing.assert_allclose(exported.detokenize(good[:, :2]), good_actions, atol=1e-5)


@pytest.mark.parametrize("kind", ["token", "diffusion"])
def test_a_non_finite_observation_never_yields_a_valid_chunk(kind, tmp_path):
    """Both policy kinds: a row whose state history holds NaN or Inf gets a NaN chunk and valid False, the other rows
    are unchanged; an observation that is not a dict, lacks 'state' or is not numeric is one clear error."""
    import jax

    from policy_helpers import random_obs, save_tiny_oat, tiny_policy

    if kind == "token":
        policy = tiny_policy(save_tiny_oat(str(tmp_path / "oat")))
    else:
        from oat_jax.normalizer import Normalizer
        from oat_jax.policy.diffusion import DiffusionConfig, init_params
        from oat_jax.policy.diffusion_policy import DiffusionPolicy
        config = DiffusionConfig(action_dim=3, horizon=8, obs_dim=5, n_obs_steps=2, embed_dim=16, depth=1,
                                 num_heads=2, state_hidden=16, num_inference_steps=2)
        action_normalizer = Normalizer.from_stats({"min": [-1.0, -2.0, 0.0], "max": [1.0, 2.0, 1.0]})
        policy = DiffusionPolicy(config, init_params(config, jax.random.PRNGKey(0)), action_normalizer, {},
                                 n_action_steps=4)
    obs = random_obs(4, obs_dim=policy.config.obs_dim)
    clean, clean_valid = policy.act(obs, jax.random.PRNGKey(0))
    bad = {"state": obs["state"].copy()}
    bad["state"][1, 0, 0], bad["state"][3, -1, -1] = np.nan, np.inf
    actions, valid = policy.act(bad, jax.random.PRNGKey(0))
    assert list(valid) == [clean_valid[0], False, clean_valid[2], False]
    assert np.isnan(actions[[1, 3]]).all() and np.isfinite(actions[[0, 2]]).all()
    np.testing.assert_allclose(actions[[0, 2]], clean[[0, 2]], atol=1e-5)
    with pytest.raises(TypeError, match="obs must be a dict"):
        policy.act(obs["state"], jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"obs has no \['state'\] entry"):
        policy.act({"State": obs["state"]}, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"obs\['state'\] must be a numeric"):
        policy.act({"state": [["a"]]}, jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "foo/bar", "Evil", "1abc", "a b"])
def test_a_dataset_name_never_acts_as_a_path(name, tmp_path, capsys):
    """`convert --name` labels the records inside --output: a name with a path separator, '..' or anything but
    lowercase letters, digits and underscores is refused before anything is written (exit 1, one line naming it)."""
    from data_pipelines import convert
    from test_data_convert import make_episodes, write_npz_dir

    source = write_npz_dir(str(tmp_path / "in"), make_episodes(seed=4))
    output = tmp_path / "out" / "set"
    assert convert.main(["--format=npz", f"--input={source}", f"--output={output}", f"--name={name}"]) == 1
    assert "is not a dataset name" in capsys.readouterr().err
    assert not output.exists() and not (tmp_path / "evil").exists() and not (tmp_path / "out" / "evil").exists()
    assert convert.main(["--format=npz", f"--input={source}", f"--output={output}", "--name=my_set_2"]) == 0


def test_a_conversion_killed_between_the_moves_of_its_commit_loses_nothing(tmp_path, monkeypatch):
    """Where the filesystem cannot swap two directories atomically, the commit moves the old dataset aside first:
    a failure of the second move puts it back at once, and a process killed in between leaves it in its staging
    directory, from where the next conversion into that output restores it before anything else."""
    import subprocess

    import tensorflow_datasets as tfds

    from data_pipelines import convert, rlds_writer
    from test_data_convert import make_episodes, write_npz_dir

    def episodes_in(path):
        return len(list(tfds.builder_from_directory(path).as_dataset(split="train")))

    output = str(tmp_path / "out")
    first = write_npz_dir(str(tmp_path / "a"), make_episodes(seed=1)[:2])
    second = write_npz_dir(str(tmp_path / "b"), make_episodes(seed=2))
    assert convert.main(["--format=npz", f"--input={first}", f"--output={output}"]) == 0
    monkeypatch.setattr(rlds_writer, "_exchange", lambda a, b: False)  # e.g. a filesystem without renameat2

    real_replace, calls = os.replace, []

    def failing_second_move(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(rlds_writer.os, "replace", failing_second_move)
    with pytest.raises(OSError, match="No space left"):
        convert.main(["--format=npz", f"--input={second}", f"--output={output}", "--overwrite"])
    monkeypatch.setattr(rlds_writer.os, "replace", real_replace)
    assert episodes_in(output) == 2  # the previous dataset, put back

    # killed between the moves: the output is gone, the old dataset sits in a dead writer's staging directory
    dead = subprocess.Popen(["true"])
    dead.wait()
    staging = tmp_path / f".out.tmp-{dead.pid}-x"
    staging.mkdir()
    os.replace(output, staging / "previous")
    assert convert.main(["--format=npz", f"--input={second}", f"--output={output}"]) == 1  # no --overwrite
    assert episodes_in(output) == 2 and not staging.exists()
    assert convert.main(["--format=npz", f"--input={second}", f"--output={output}", "--overwrite"]) == 0
    assert episodes_in(output) == len(make_episodes(seed=2))
