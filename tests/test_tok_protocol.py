"""Every action tokenizer (OAT, Bin, FAST) passes the same `ActionTokenizer` conformance checks: shapes and dtypes,
prefix/PAD conventions, invalid sequences flagged and NaN, input errors, save -> load_action_tokenizer -> same
outputs, and the report hooks."""

import numpy as np
import pytest

from oat_jax import OATTokenizer, Normalizer
from oat_jax.action_tokenizers import PAD_ID, ActionTokenizer, fit_action_tokenizer, load_action_tokenizer
from test_tok_oat import TINY, random_params

H, D = TINY.horizon, TINY.action_dim


def _chunks(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, H)[None, :, None]
    freq, phase = rng.uniform(0.2, 1.2, (n, 1, D)), rng.uniform(0, 6.3, (n, 1, D))
    return (rng.uniform(0.3, 1.5, (n, 1, D)) * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def _make(kind):
    if kind == "oat":
        return OATTokenizer(TINY, random_params(TINY), Normalizer.fit(_chunks(64)))
    return fit_action_tokenizer(kind, _chunks(400), **({"vocab_size": 300} if kind == "fast" else {}))


@pytest.fixture(scope="module", params=["oat", "bin", "fast"])
def tok(request):
    return _make(request.param)


def test_sizes_and_round_trip_shapes(tok):
    assert isinstance(tok, ActionTokenizer) and tok.name in ("oat", "bin", "fast")
    assert (tok.horizon, tok.action_dim) == (H, D) and tok.vocab_size > 1 and tok.max_tokens >= 1
    tokens, lengths = tok.tokenize(_chunks(5, seed=1))
    assert tokens.shape == (5, tok.max_tokens) and tokens.dtype == np.int32
    assert lengths.shape == (5,) and lengths.dtype == np.int32 and np.all(lengths >= 1)
    if tok.fixed_length:
        assert np.all(lengths == tok.max_tokens)
    kept = np.arange(tok.max_tokens)[None] < lengths[:, None]
    assert np.all((tokens >= 0) & (tokens < tok.vocab_size) | ~kept) and np.all(tokens[~kept] == PAD_ID)
    actions, valid = tok.detokenize(tokens, lengths)
    assert actions.shape == (5, H, D) and actions.dtype == np.float32 and valid.dtype == bool and valid.all()
    default, _ = tok.detokenize(tokens)  # lengths default to the non-PAD count
    np.testing.assert_array_equal(default, actions)


def test_invalid_sequences_are_nan_and_flagged(tok):
    tokens, lengths = tok.tokenize(_chunks(3, seed=2))
    tokens[0, 0] = tok.vocab_size  # an id out of range inside the kept prefix
    lengths[1] = 0  # no tokens carry no chunk
    actions, valid = tok.detokenize(tokens, lengths)
    assert not valid[0] and not valid[1] and valid[2]
    assert np.isnan(actions[:2]).all() and np.isfinite(actions[2]).all()


def test_bad_inputs_raise_value_errors(tok):
    with pytest.raises(ValueError, match="batch axis"):
        tok.tokenize(_chunks(1)[0])
    with pytest.raises(ValueError):
        tok.tokenize(np.full((1, H, D), np.nan, np.float32))
    with pytest.raises(ValueError, match="max_tokens"):
        tok.detokenize(np.zeros((1, tok.max_tokens + 1), np.int32))
    with pytest.raises(ValueError, match="lengths"):
        tok.detokenize(np.zeros((2, tok.max_tokens), np.int32), np.array([1, tok.max_tokens + 1]))


def test_save_and_load_action_tokenizer_give_the_same_outputs(tok, tmp_path):
    x = _chunks(4, seed=3)
    path = tok.save(str(tmp_path / tok.name))
    loaded = load_action_tokenizer(path)
    assert type(loaded) is type(tok)
    tokens, lengths = tok.tokenize(x)
    np.testing.assert_array_equal(loaded.tokenize(x)[0], tokens)
    np.testing.assert_allclose(loaded.detokenize(tokens, lengths)[0], tok.detokenize(tokens, lengths)[0], rtol=1e-6)


def test_report_hooks(tok):
    ks = tok.report_prefix_lengths()
    assert all(1 <= k <= tok.max_tokens for k in ks) and ks == sorted(ks)
    x = _chunks(6, seed=4)
    recon, valid = tok.detokenize(*tok.tokenize(x))
    assert isinstance(tok.diagnostics(x, recon, valid), dict)
