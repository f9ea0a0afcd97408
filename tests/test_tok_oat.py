"""OAT behind the ActionTokenizer interface: same numbers as OATTokenizer, prefixes, validity flag, save/load and
the registry's fallbacks."""

import json
import os

import jax
import numpy as np
import pytest

from oat_jax import OATConfig, OATTokenizer
from oat_jax.action_tokenizers import (PAD_ID, TOKENIZER_FILE, ActionTokenizer, OATActionTokenizer,
                                       fit_action_tokenizer, load_action_tokenizer)
from oat_jax.model import abstract_params
from oat_jax.normalizer import ActionNormalizer

TINY = OATConfig(action_dim=3, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=32, enc_depth=1, enc_heads=2,
                 dec_width=32, dec_depth=1, dec_heads=2, dec_ffn_dim=64, enc_dropout=0.0, dec_dropout=0.0,
                 dec_attn_dropout=0.0)


def random_params(config: OATConfig, seed: int = 0, scale: float = 0.5) -> dict:
    """Params of `config` drawn N(0, scale^2) with numpy (not the zero-initialised heads of init_params, so tokens
    and reconstructions vary; no jit compilation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, scale, s.shape).astype(np.float32), abstract_params(config))


def random_oat(config=TINY, seed=0) -> OATTokenizer:
    """A tokenizer with random params and a normalizer for ranges [-2, 2], [0, 5], [1, 3]."""
    return OATTokenizer(config, random_params(config, seed),
                        ActionNormalizer.fit(np.array([[-2.0, 0, 1], [2, 5, 3]])))


def _actions(batch, seed=0):
    return np.random.default_rng(seed).uniform([-2, 0, 1], [2, 5, 3], size=(batch, TINY.horizon, 3)).astype(
        np.float32)


def test_adapter_matches_the_oat_tokenizer_for_every_prefix():
    base = random_oat()
    tok = OATActionTokenizer(base, block_size=4)  # 6 rows -> a block of 4 and a padded block of 2 (every call
    assert isinstance(tok, ActionTokenizer)     # in this file has batch 4: one compilation per function)
    assert (tok.vocab_size, tok.max_tokens, tok.fixed_length, tok.horizon, tok.action_dim) == (36, 4, True, 8, 3)
    x = _actions(8)
    reference = lambda fn, *args: np.concatenate([np.asarray(fn(*(a[i:i + 4] if np.ndim(a) else a for a in args)))
                                                  for i in (0, 4)])[:6]
    tokens, lengths = tok.tokenize(x[:6])
    assert tokens.dtype == np.int32 and np.all(lengths == 4)
    np.testing.assert_array_equal(tokens, reference(base.tokenize, x))
    assert len(np.unique(tokens)) > 3
    full_tokens = np.concatenate([tokens, tokens[:2]])
    for k in range(1, 5):
        recon, valid = tok.detokenize(tokens, np.full(6, k, np.int32))
        assert valid.all() and recon.dtype == np.float32
        np.testing.assert_allclose(recon, reference(base.detokenize, full_tokens, k), rtol=1e-5, atol=1e-5)
    mixed = np.array([1, 2, 3, 4, 1, 2, 3, 4], np.int32)
    padded = np.where(np.arange(4)[None] < mixed[:6, None], tokens, PAD_ID)
    recon, _ = tok.detokenize(padded)  # default lengths = non-PAD count
    np.testing.assert_allclose(recon, reference(base.detokenize, full_tokens, mixed), rtol=1e-5, atol=1e-5)


def test_invalid_sequences_are_nan_with_valid_false():
    tok = OATActionTokenizer(random_oat())
    tokens, lengths = tok.tokenize(_actions(4))
    tokens[0, 1], tokens[1, 3] = 36, -5
    lengths[2] = 0
    lengths[1] = 3  # the bad id of row 1 is outside its prefix: ignored
    recon, valid = tok.detokenize(tokens, lengths)
    np.testing.assert_array_equal(valid, [False, True, False, True])
    assert np.isnan(recon[[0, 2]]).all() and np.isfinite(recon[[1, 3]]).all()
    with pytest.raises(ValueError, match="max_tokens"):
        tok.detokenize(np.zeros((1, 5), int))


def test_save_load_and_registry_fallbacks(tmp_path):
    tok = OATActionTokenizer(random_oat())
    x = _actions(4)
    path = tok.save(str(tmp_path / "oat"))
    with open(os.path.join(path, TOKENIZER_FILE)) as f:
        assert json.load(f)["type"] == "oat"
    loaded = load_action_tokenizer(path)
    assert isinstance(loaded, OATActionTokenizer) and loaded.config == TINY
    tokens, lengths = tok.tokenize(x)
    np.testing.assert_array_equal(loaded.tokenize(x)[0], tokens)
    np.testing.assert_array_equal(loaded.detokenize(tokens, lengths)[0], tok.detokenize(tokens, lengths)[0])
    # A plain OATTokenizer directory (no action_tokenizer.json) and a workdir holding tokenizer/ load as OAT.
    tok.tokenizer.save(str(tmp_path / "workdir" / "tokenizer"))
    for source in (str(tmp_path / "workdir" / "tokenizer"), str(tmp_path / "workdir")):
        np.testing.assert_array_equal(load_action_tokenizer(source).tokenize(x)[0], tokens)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_action_tokenizer(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_action_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="experiments.train"):
        fit_action_tokenizer("oat", x)
    with pytest.raises(ValueError, match="Unknown tokenizer"):
        fit_action_tokenizer("vq", x)
