"""Bin baseline: analytic reconstruction error, time-major layout, total decoding with a validity flag, save/load."""

import numpy as np
import pytest

from oat_jax.action_tokenizers import PAD_ID, ActionTokenizer, BinActionTokenizer, load_action_tokenizer
from oat_jax.normalizer import ActionNormalizer

H, D = 8, 3


def _uniform_chunks(n=4000, seed=0):
    """Raw chunks uniform over per-dimension ranges of very different sizes."""
    rng = np.random.default_rng(seed)
    low, high = np.array([-1.0, 0.0, -30.0]), np.array([1.0, 0.1, 50.0])
    return (low + (high - low) * rng.random((n, H, D))).astype(np.float32)


def test_round_trip_error_matches_the_analytic_bound():
    x = _uniform_chunks()
    tok = BinActionTokenizer.fit(x, num_bins=256)
    assert isinstance(tok, ActionTokenizer)
    assert (tok.vocab_size, tok.max_tokens, tok.fixed_length) == (256, H * D, True)
    tokens, lengths = tok.tokenize(x)
    assert tokens.shape == (len(x), H * D) and tokens.dtype == np.int32 and np.all(lengths == H * D)
    recon, valid = tok.detokenize(tokens, lengths)
    assert recon.dtype == np.float32 and recon.shape == x.shape and valid.all()
    err = tok.normalizer.normalize(recon) - tok.normalizer.normalize(x)
    w = 2.0 / 256
    assert np.abs(err).max() <= w / 2 + 1e-6  # never more than half a bin
    np.testing.assert_allclose(np.mean(err ** 2), w ** 2 / 12, rtol=0.05)  # uniform within bins
    np.testing.assert_array_equal(tok.tokenize(recon)[0], tokens)  # bin centres map to their own bin


def test_tokens_are_time_major_bin_indices():
    tok = BinActionTokenizer(ActionNormalizer.identity(D), H, num_bins=4)  # bins of [-1, 1]: edges -0.5, 0, 0.5
    x = np.zeros((1, H, D), np.float32)
    x[0, 2, 1] = 0.9  # step 2, dim 1 -> bin 3 at token index 2 * D + 1
    x[0, 5, 0] = -0.9  # step 5, dim 0 -> bin 0 at token 15
    x[0, 7, 2] = 5.0  # outside the range -> the edge bin
    tokens, _ = tok.tokenize(x)
    expected = np.full(H * D, 2)  # 0.0 is the lower edge of bin 2
    expected[2 * D + 1], expected[5 * D], expected[7 * D + 2] = 3, 0, 3
    np.testing.assert_array_equal(tokens[0], expected)
    recon, _ = tok.detokenize(tokens)
    assert recon[0, 2, 1] == pytest.approx(0.75) and recon[0, 5, 0] == pytest.approx(-0.75)


def test_out_of_range_ids_and_empty_sequences_are_invalid_nan():
    x = _uniform_chunks(6)
    tok = BinActionTokenizer.fit(x)
    tokens, lengths = tok.tokenize(x)
    tokens[1, 5], tokens[2, 0] = 256, -7
    lengths[3] = 0
    recon, valid = tok.detokenize(tokens, lengths)
    np.testing.assert_array_equal(valid, [True, False, False, False, True, True])
    assert np.isnan(recon[~valid]).all() and np.isfinite(recon[valid]).all()


def test_prefixes_hold_the_last_decoded_step():
    x = _uniform_chunks(5)
    tok = BinActionTokenizer.fit(x)
    tokens, _ = tok.tokenize(x)
    full, _ = tok.detokenize(tokens)
    k = 3 * D + 1  # three whole steps and dim 0 of step 3
    recon, valid = tok.detokenize(tokens[:, :k])  # PAD-padded to max_tokens, length = non-PAD count
    assert valid.all()
    np.testing.assert_array_equal(recon[:, :3], full[:, :3])
    np.testing.assert_array_equal(recon[:, 3:, 0], np.repeat(full[:, 3:4, 0], H - 3, axis=1))
    np.testing.assert_array_equal(recon[:, 3:, 1:], np.repeat(full[:, 2:3, 1:], H - 3, axis=1))
    # Fewer than D tokens: undecoded dimensions take the middle of their range (normalized 0).
    short, valid = tok.detokenize(tokens[:, :1])
    assert valid.all()
    np.testing.assert_allclose(tok.normalizer.normalize(short)[:, :, 1:], 0.0, atol=1e-6)
    padded = np.full((5, H * D), PAD_ID)
    padded[:, :k] = tokens[:, :k]
    np.testing.assert_array_equal(tok.detokenize(padded)[0], recon)


def test_bad_inputs_raise_value_errors():
    tok = BinActionTokenizer.fit(_uniform_chunks(10))
    with pytest.raises(ValueError, match="shape"):
        tok.tokenize(np.zeros((H, D)))
    with pytest.raises(ValueError, match="NaN"):
        tok.tokenize(np.full((1, H, D), np.nan))
    with pytest.raises(ValueError, match="max_tokens"):
        tok.detokenize(np.zeros((1, H * D + 1), int))
    with pytest.raises(ValueError, match="lengths"):
        tok.detokenize(np.zeros((2, 4), int), np.array([1, 5]))


def test_save_load_equality(tmp_path):
    x = _uniform_chunks(50)
    tok = BinActionTokenizer.fit(x, num_bins=64)
    path = tok.save(str(tmp_path / "bin"))
    loaded = load_action_tokenizer(path)
    assert isinstance(loaded, BinActionTokenizer) and loaded.to_dict() == tok.to_dict()
    tokens, lengths = tok.tokenize(x)
    np.testing.assert_array_equal(loaded.tokenize(x)[0], tokens)
    np.testing.assert_array_equal(loaded.detokenize(tokens, lengths)[0], tok.detokenize(tokens, lengths)[0])
