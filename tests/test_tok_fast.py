"""FAST baseline: DCT, round trip within the rounding error, validity flag for undecodable sequences, save/load."""

import numpy as np
import pytest

from oat_jax.action_tokenizers import ActionTokenizer, FASTActionTokenizer, load_action_tokenizer
from oat_jax.action_tokenizers.fast import dct_matrix

H, D = 16, 3


def _smooth_chunks(n=600, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, H)[None, :, None]
    freq, phase = rng.uniform(0.2, 1.5, (n, 1, D)), rng.uniform(0, 6.3, (n, 1, D))
    return (rng.uniform(0.2, 2.0, (n, 1, D)) * np.sin(2 * np.pi * freq * t + phase) + [0.0, 3.0, -1.0]).astype(
        np.float32)


@pytest.fixture(scope="module")
def fitted():
    x = _smooth_chunks()
    return FASTActionTokenizer.fit(x, scale=10.0, vocab_size=256, max_tokens=H * D), x


def test_dct_matrix_is_the_orthonormal_dct_ii():
    c = dct_matrix(8)
    np.testing.assert_allclose(c @ c.T, np.eye(8), atol=1e-12)
    x = np.random.default_rng(0).normal(size=8)
    n = np.arange(8)
    k = 3  # DCT-II definition, orthonormal scaling for k > 0
    assert (c @ x)[k] == pytest.approx(np.sqrt(2 / 8) * np.sum(x * np.cos(np.pi * (2 * n + 1) * k / 16)))
    assert (c @ x)[0] == pytest.approx(np.sum(x) / np.sqrt(8))


def test_round_trip_is_within_the_rounding_error(fitted):
    tok, x = fitted
    assert isinstance(tok, ActionTokenizer) and not tok.fixed_length
    tokens, lengths = tok.tokenize(x)
    assert tokens.shape == (len(x), tok.max_tokens) and tokens.dtype == np.int32
    assert 1 <= lengths.min() and lengths.max() <= tok.max_tokens and lengths.mean() < H * D / 2  # compresses
    assert np.all(tokens[np.arange(tok.max_tokens)[None, :] >= lengths[:, None]] == -1)
    recon, valid = tok.detokenize(tokens, lengths)
    assert valid.all() and recon.shape == x.shape and recon.dtype == np.float32
    n = tok.normalizer
    chunk_mse = np.mean((n.normalize(recon) - n.normalize(x)) ** 2, axis=(1, 2))
    assert chunk_mse.max() <= tok.quantization_mse_bound + 1e-7
    # Exactly the rounding error of the coefficients (the DCT is orthonormal).
    exact = np.asarray(dct_matrix(H)) @ n.normalize(x).astype(np.float64) * tok.scale
    rounding = np.mean((np.rint(exact) - exact) ** 2, axis=(1, 2)) / tok.scale ** 2
    np.testing.assert_allclose(chunk_mse, rounding, rtol=1e-3, atol=1e-9)


def test_undecodable_sequences_are_invalid_nan_not_zeros(fitted):
    tok, x = fitted
    tokens, lengths = tok.tokenize(x[:4])
    # Truncated and extended sequences no longer map to H * D coefficients; an out-of-vocabulary id is invalid.
    bad = tokens.copy()
    bad_lengths = lengths.copy()
    bad_lengths[0] -= 1
    bad[1, lengths[1]] = 0
    bad_lengths[1] += 1
    bad[2, 0] = tok.vocab_size
    recon, valid = tok.detokenize(bad, bad_lengths)
    np.testing.assert_array_equal(valid, [False, False, False, True])
    assert np.isnan(recon[:3]).all() and np.isfinite(recon[3]).all()
    assert not tok.detokenize(np.zeros((1, 0), int))[1][0]  # empty sequence
    rng = np.random.default_rng(0)
    rand = rng.integers(0, tok.vocab_size, size=(200, 5))
    assert tok.detokenize(rand)[1].mean() < 0.5  # most random sequences do not decode


def test_clipping_and_truncation_are_reported(fitted):
    tok, x = fitted
    far = x[:2].copy()
    far[0] += 100.0  # far outside the fitted range: coefficients beyond the alphabet are clipped
    assert tok.clipped_coefficients(far)[0] > 0 and tok.clipped_coefficients(far)[1] == 0
    short = FASTActionTokenizer(tok.normalizer, H, tok.scale, tok.min_coeff, tok.max_coeff, tok.bpe, max_tokens=2)
    full_lengths = short.token_lengths(x[:20])
    assert full_lengths.max() > 2
    tokens, lengths = short.tokenize(x[:20])
    np.testing.assert_array_equal(lengths, np.minimum(full_lengths, 2))
    assert not short.detokenize(tokens, lengths)[1][full_lengths > 2].any()


def test_fit_errors_and_save_load_equality(fitted, tmp_path):
    tok, x = fitted
    with pytest.raises(ValueError, match="vocab_size"):
        FASTActionTokenizer.fit(x, scale=1000.0, vocab_size=256)
    path = tok.save(str(tmp_path / "fast"))
    loaded = load_action_tokenizer(path)
    assert isinstance(loaded, FASTActionTokenizer) and loaded.to_dict() == tok.to_dict()
    assert loaded.vocab_size == tok.vocab_size
    tokens, lengths = tok.tokenize(x)
    np.testing.assert_array_equal(loaded.tokenize(x)[0], tokens)
    np.testing.assert_array_equal(loaded.detokenize(tokens, lengths)[0], tok.detokenize(tokens, lengths)[0])
