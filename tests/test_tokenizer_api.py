"""OATTokenizer: API shapes/dtypes, unbatched inputs of the pure functions, save/load round trip, clear errors,
invalid examples flagged (valid False, NaN chunk)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oat_helpers import TINY, random_params, smooth_actions

from oat_jax import Normalizer, OATConfig, OATTokenizer, fsq
from oat_jax.artifacts import TYPE_FILE

H, D, N = TINY.horizon, TINY.action_dim, TINY.num_tokens


def _raw_actions(batch, seed=0):
    """Actions in raw units (offset and scaled away from [-1, 1])."""
    return smooth_actions(batch, H, D, seed=seed) * np.array([2.0, 0.5, 10.0], np.float32) + 3.0


@functools.lru_cache(maxsize=None)
def _tok():
    """Shared tokenizer for read-only tests (do not mutate)."""
    return OATTokenizer(TINY, random_params(TINY), Normalizer.fit(_raw_actions(64), "limits"))


def test_sizes():
    tok = _tok()
    assert (tok.vocab_size, tok.num_tokens, tok.horizon, tok.action_dim) == (60, N, H, D)
    assert "vocab_size=60" in repr(tok)


def test_tokenize_detokenize_shapes_dtypes_and_unbatched_inputs():
    tok, x = _tok(), _raw_actions(4)
    tokens, lengths = tok.tokenize(x)
    assert isinstance(tokens, np.ndarray) and tokens.shape == (4, N) and tokens.dtype == np.int32
    assert isinstance(lengths, np.ndarray) and lengths.dtype == np.int32
    np.testing.assert_array_equal(lengths, [N] * 4)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < tok.vocab_size
    assert len(np.unique(tokens)) > 1
    actions, valid = tok.detokenize(tokens)
    assert isinstance(actions, np.ndarray) and actions.shape == (4, H, D) and actions.dtype == np.float32
    assert valid.shape == (4,) and valid.dtype == bool and valid.all() and np.all(np.isfinite(actions))
    np.testing.assert_allclose(tok.autoencode(x), actions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tok.autoencode(x, 2), tok.detokenize(tokens[:, :2])[0], rtol=1e-5, atol=1e-5)
    # The host methods take batches only; the pure functions take single examples too.
    for call in (lambda: tok.tokenize(x[2]), lambda: tok.detokenize(tokens[2]), lambda: tok.autoencode(x[0], 2),
                 lambda: tok.encode(x[0])):
        with pytest.raises(ValueError, match="add a batch axis"):
            call()
    np.testing.assert_array_equal(tok.tokenize_fn(tok.params, x[2]), tokens[2])
    assert tok.tokenize_fn(tok.params, x[2]).shape == (N,)
    single = np.asarray(tok.detokenize_fn(tok.params, tokens[2]))
    assert single.shape == (H, D)
    np.testing.assert_allclose(single, actions[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tok.detokenize_fn(tok.params, tokens[2, :3]), tok.detokenize(tokens[:, :3])[0][2],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tok.autoencode_fn(tok.params, x[0], 2), tok.detokenize(tokens[:1, :2])[0][0],
                               rtol=1e-5, atol=1e-5)


def test_outputs_are_in_raw_units():
    tok, x = _tok(), _raw_actions(4)
    normalized = jax.jit(tok.model.apply)({"params": tok.params}, tok.normalizer.normalize(x))[0]
    np.testing.assert_allclose(tok.autoencode(x), tok.normalizer.unnormalize(np.asarray(normalized)), rtol=1e-5,
                               atol=1e-5)


def test_encode_decode_codes_and_latents():
    tok, x = _tok(), _raw_actions(4)
    codes = tok.encode(x)
    assert codes.shape == (4, N, TINY.latent_dim) and codes.dtype == jnp.float32
    np.testing.assert_array_equal(fsq.codes_to_indices(codes, TINY.levels), tok.tokenize(x)[0])
    latents = tok.encode(x, quantize=False)
    np.testing.assert_array_equal(fsq.quantize(latents, TINY.levels), codes)
    assert np.abs(latents - codes).max() > 0
    np.testing.assert_allclose(tok.decode(codes), tok.autoencode(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tok.decode(codes[1:2], 2)[0], tok.autoencode(x, 2)[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tok.decode_fn(tok.params, codes[1], 2), tok.autoencode(x, 2)[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="add a batch axis"):
        tok.decode(codes[1], 2)
    assert tok.encode_fn(tok.params, x[0]).shape == (N, TINY.latent_dim)
    np.testing.assert_array_equal(tok.encode_fn(tok.params, x[0]), codes[0])


def test_pure_functions_inside_a_user_jit():
    tok, x = _tok(), _raw_actions(4)

    @jax.jit
    def round_trip(params, actions, lengths):
        tokens = tok.tokenize_fn(params, actions)
        return tokens, tok.detokenize_fn(params, tokens, lengths)

    tokens, recon = round_trip(tok.params, x, jnp.array([1, 2, 4, 8]))
    np.testing.assert_array_equal(tokens, tok.tokenize(x)[0])
    np.testing.assert_allclose(recon, tok.autoencode(x, np.array([1, 2, 4, 8])), rtol=1e-5, atol=1e-5)
    codes = jax.jit(tok.encode_fn)(tok.params, x)
    np.testing.assert_allclose(jax.jit(tok.decode_fn)(tok.params, codes, 3), tok.autoencode(x, 3), rtol=1e-5,
                               atol=1e-5)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(tok.decode_fn(p, codes) ** 2)))(tok.params)  # differentiable
    assert np.abs(np.asarray(grads["decoder"]["head"]["kernel"])).max() > 0


def test_save_load_round_trip_is_bit_identical(tmp_path):
    tok, x = _tok(), _raw_actions(4, seed=3)
    path = tok.save(str(tmp_path / "tok"))
    assert sorted(os.listdir(path)) == sorted(["config.json", "integrity.json", "normalizer.json", "params",
                                               TYPE_FILE])
    with open(os.path.join(path, TYPE_FILE)) as f:
        description = json.load(f)
    assert description["type"] == "oat" and OATConfig.from_dict(description["config"]) == tok.config
    loaded = OATTokenizer.load(path)
    assert loaded.config == tok.config and loaded.normalizer.to_dict() == tok.normalizer.to_dict()
    for a, b in zip(jax.tree.leaves(tok.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)
    tokens, lengths = tok.tokenize(x)
    loaded_tokens, loaded_lengths = loaded.tokenize(x)
    np.testing.assert_array_equal(loaded_tokens, tokens)
    np.testing.assert_array_equal(loaded_lengths, lengths)
    for k in (1, 3, N):
        actions, valid = tok.detokenize(tokens[:, :k])
        assert valid.all()
        loaded_actions, loaded_valid = loaded.detokenize(tokens[:, :k])
        np.testing.assert_array_equal(loaded_actions, actions)
        np.testing.assert_array_equal(loaded_valid, valid)
    # A training workdir holding the tokenizer under tokenizer/ loads too.
    workdir = tmp_path / "workdir"
    tok.save(str(workdir / "tokenizer"))
    np.testing.assert_array_equal(OATTokenizer.load(str(workdir)).tokenize(x)[0], tokens)


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    tok = _tok()
    tok.save(str(tmp_path / "t"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tok.save(str(tmp_path / "t"))
    tok.save(str(tmp_path / "t"), overwrite=True)
    assert OATTokenizer.load(str(tmp_path / "t")).config == TINY


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OATTokenizer.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a tokenizer")
    with pytest.raises(FileNotFoundError, match="holds no saved tokenizer"):
        OATTokenizer.load(str(tmp_path / "empty"))
    path = _tok().save(str(tmp_path / "tok"))
    config_file = os.path.join(path, "config.json")
    with open(config_file) as f:
        config = json.load(f)
    config["dec_ffn_dim"] = 48
    with open(config_file, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="config.json .*truncated or replaced"):  # the integrity check sees it
        OATTokenizer.load(path)
    with pytest.raises(ValueError, match="config does not match.*linear1.*kernel.*shape"):  # and so does the
        OATTokenizer.load(path, verify=False)  # check of the config against the params


def test_constructor_rejects_mismatched_parts():
    params = random_params(TINY)
    with pytest.raises(ValueError, match="config does not match"):
        OATTokenizer(TINY.replace(levels=(5, 4)), params)
    with pytest.raises(ValueError, match="normalizer has 2 action dims"):
        OATTokenizer(TINY, params, Normalizer.identity(2))
    assert OATTokenizer(TINY, {"params": params}).normalizer.mode == "identity"


@pytest.mark.parametrize("actions, message", [
    (np.zeros((2, H, D + 1)), "action dim 4"),
    (np.zeros((1, H, D - 1)), "action dim 2"),
    (np.zeros((H, D)), "add a batch axis"),
    (np.zeros((2, H + 1, D)), "horizon 9"),
    (np.zeros((D,)), "shape"),
    (np.zeros((2, H, D), dtype=complex), "real-valued"),
    (np.where(np.arange(H * D).reshape(1, H, D) == 5, np.nan, 0.0), "1 NaN"),
    (np.where(np.arange(H * D).reshape(1, H, D) == 5, -np.inf, 0.0), "1 Inf"),
])
def test_bad_actions_raise_value_error_naming_the_problem(actions, message):
    tok = _tok()
    for fn in (tok.tokenize, tok.encode, tok.autoencode):
        with pytest.raises(ValueError, match=message):
            fn(actions)


@pytest.mark.parametrize("tokens, lengths, message", [
    (np.zeros((2, N + 1), int), None, "width 9"),
    (np.zeros((2, N), int), N + 1, r"lengths must be in \[0, 8\]"),
    (np.zeros((2, N), int), -1, r"lengths must be in \[0, 8\]"),
    (np.zeros((2, 3), int), 4, r"lengths must be in \[0, 3\]"),
    (np.zeros((2, N), int), np.array([1, 2, 3]), r"\(2,\) array"),
    (np.zeros((2, N)), None, "integer"),
    (np.zeros((2, N), int), 2.0, "integers"),
    (np.zeros((N,), int), None, "add a batch axis"),
])
def test_bad_tokens_raise_value_error_naming_the_problem(tokens, lengths, message):
    with pytest.raises(ValueError, match=message):
        _tok().detokenize(tokens, lengths)


@pytest.mark.parametrize("tokens, lengths, expected_valid", [
    (np.full((2, N), 60), None, [False, False]),  # ids >= vocab_size
    (np.full((2, N), -1), N, [False, False]),  # negative ids inside the kept prefix
    (np.full((2, N), -1), None, [False, False]),  # all PAD: length 0
    (np.zeros((2, 0), int), None, [False, False]),  # no tokens at all
    (np.zeros((2, N), int), 0, [False, False]),
    (np.zeros((2, N), int), np.array([1, 0]), [True, False]),
    (np.array([[0, 1, 2, 60, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]]), None, [False, True]),
])
def test_out_of_range_ids_and_length_zero_give_invalid_nan_chunks(tokens, lengths, expected_valid):
    tok = _tok()
    actions, valid = tok.detokenize(tokens, lengths)
    assert actions.shape == (2, H, D) and actions.dtype == np.float32 and valid.dtype == bool
    np.testing.assert_array_equal(valid, expected_valid)
    assert np.all(np.isnan(actions[~valid])) and np.all(np.isfinite(actions[valid]))
    # an invalid example does not change the valid ones in its batch
    for i in np.flatnonzero(valid):
        alone = tok.detokenize(tokens[i:i + 1], None if np.ndim(lengths) == 0 else lengths[i:i + 1])[0]
        np.testing.assert_allclose(actions[i], alone[0], rtol=1e-5, atol=1e-5)


def test_ids_outside_the_decoded_prefix_are_not_checked():
    tok = _tok()
    tokens = np.zeros((1, N), int)
    tokens[0, 2:5] = -1  # PAD after a length-2 prefix
    tokens[0, 5:] = tok.vocab_size  # and out-of-range ids, ignored too
    actions, valid = tok.detokenize(tokens, 2)
    prefix, prefix_valid = tok.detokenize(tokens[:, :2])
    assert valid.all() and prefix_valid.all()
    np.testing.assert_array_equal(actions, prefix)
    padded = np.where(np.arange(N) < 2, tokens, -1)
    np.testing.assert_array_equal(tok.detokenize(padded)[0], prefix)  # lengths=None: the non-PAD count


def test_pure_functions_flag_bad_prefixes_with_nan_inside_jit():
    tok, x = _tok(), _raw_actions(3)
    tokens = np.asarray(tok.tokenize_fn(tok.params, x))
    bad_id = tokens.copy()
    bad_id[1, 2] = tok.vocab_size
    bad_id[2, 0] = -1
    detok = jax.jit(tok.detokenize_fn)
    out = np.asarray(detok(tok.params, bad_id, 4))
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1:]))
    np.testing.assert_allclose(out[0], tok.detokenize(tokens[:1, :4])[0][0], rtol=1e-5, atol=1e-5)
    # the bad id after the kept prefix is ignored
    assert np.all(np.isfinite(np.asarray(detok(tok.params, bad_id[1], 2))))
    out = np.asarray(detok(tok.params, tokens[:, :3], jnp.array([0, 3, 4])))  # lengths outside 1..k = 3
    assert np.all(np.isnan(out[0])) and np.all(np.isnan(out[2])) and np.all(np.isfinite(out[1]))
    codes = np.asarray(tok.encode_fn(tok.params, x))
    out = np.asarray(jax.jit(tok.decode_fn)(tok.params, codes, jnp.array([1, N + 1, N])))
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1])) and np.all(np.isfinite(out[2]))
    for fn, too_wide in ((tok.detokenize_fn, np.zeros((2, N + 1), np.int32)),
                         (tok.decode_fn, np.zeros((2, N + 1, TINY.latent_dim), np.float32))):
        with pytest.raises(ValueError, match="between 1 and N = 8"):
            jax.jit(fn)(tok.params, too_wide)


def test_bad_prefix_lengths_and_codes_elsewhere():
    tok, x = _tok(), _raw_actions(4)
    with pytest.raises(ValueError, match="prefix length 0"):
        tok.autoencode(x, 0)
    with pytest.raises(ValueError, match="prefix length 9"):
        tok.decode(np.zeros((4, N, TINY.latent_dim), np.float32), 9)
    with pytest.raises(ValueError, match="codes must be a float array of shape"):
        tok.decode(np.zeros((2, N, 2), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        tok.decode(np.full((1, N, TINY.latent_dim), np.nan, np.float32))
    with pytest.raises(ValueError, match="add a batch axis"):
        tok.decode(np.zeros((N, TINY.latent_dim), np.float32))


def test_config_fields_have_defaults_of_the_paper():
    c = OATConfig()
    assert (c.horizon, c.action_dim, c.num_tokens, c.levels, c.enc_width, c.enc_depth, c.enc_heads) == (
        32, 7, 8, (8, 5, 5, 5), 256, 2, 4)
    assert (c.dec_width, c.dec_depth, c.dec_heads, c.dec_ffn_dim, c.enc_mlp_hidden) == (256, 4, 4, 1024, 682)
    assert c.causal_registers and c.causal_decoder and c.dtype == "float32"
