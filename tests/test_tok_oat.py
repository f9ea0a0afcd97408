"""OATTokenizer's host API against its pure functions (blocks, prefixes, validity), the pure functions on (B, k)
prefixes, unbatched inputs and under vmap, save/load and the registry's fallbacks."""

import json
import os

import jax
import numpy as np
import pytest

from oat_jax import OATConfig, OATTokenizer
from oat_jax.action_tokenizers import PAD_ID, ActionTokenizer, fit_action_tokenizer, load_action_tokenizer
from oat_jax.artifacts import TYPE_FILE
from oat_jax.model import abstract_params
from oat_jax.normalizer import Normalizer

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
                        Normalizer.fit(np.array([[-2.0, 0, 1], [2, 5, 3]])))


def _actions(batch, seed=0):
    return np.random.default_rng(seed).uniform([-2, 0, 1], [2, 5, 3], size=(batch, TINY.horizon, 3)).astype(
        np.float32)


def test_host_api_matches_the_pure_functions_for_every_prefix():
    base = random_oat()
    tok = OATTokenizer(base.config, base.params, base.normalizer, block_size=4)  # 6 rows: blocks of 4 and 2 (padded)
    assert isinstance(tok, ActionTokenizer)
    assert (tok.vocab_size, tok.max_tokens, tok.fixed_length, tok.horizon, tok.action_dim) == (36, 4, True, 8, 3)
    x = _actions(6)
    tokens, lengths = tok.tokenize(x)
    assert tokens.dtype == np.int32 and np.all(lengths == 4)
    np.testing.assert_array_equal(tokens, np.asarray(jax.jit(tok.tokenize_fn)(tok.params, x)))
    assert len(np.unique(tokens)) > 3
    for k in range(1, 5):
        recon, valid = tok.detokenize(tokens, np.full(6, k, np.int32))
        assert valid.all() and recon.dtype == np.float32
        np.testing.assert_allclose(recon, tok.detokenize_fn(tok.params, tokens, k), rtol=1e-5, atol=1e-5)
        prefix, _ = tok.detokenize(tokens[:, :k])  # a (B, k) prefix decodes like lengths = k
        np.testing.assert_allclose(prefix, recon, rtol=1e-6, atol=1e-6)
    mixed = np.array([1, 2, 3, 4, 1, 2], np.int32)
    padded = np.where(np.arange(4)[None] < mixed[:, None], tokens, PAD_ID)
    recon, _ = tok.detokenize(padded)  # default lengths = non-PAD count
    np.testing.assert_allclose(recon, tok.detokenize_fn(tok.params, tokens, mixed), rtol=1e-5, atol=1e-5)
    assert tok.trace_counts["detokenize"] <= 2  # blocks of 4 and 2 rows; every prefix length shares them


def test_pure_functions_take_prefixes_single_examples_and_vmap():
    tok = random_oat()
    p, x = tok.params, _actions(5)
    tokens = np.asarray(tok.tokenize_fn(p, x))
    full = np.asarray(tok.detokenize_fn(p, tokens, 2))
    np.testing.assert_allclose(tok.detokenize_fn(p, tokens[:, :2]), full, rtol=1e-5, atol=1e-5)  # (B, k) prefix
    np.testing.assert_array_equal(tok.tokenize_fn(p, x[0]), tokens[0])  # unbatched (H, D_a) -> (N,)
    np.testing.assert_allclose(tok.detokenize_fn(p, tokens[0, :2]), full[0], rtol=1e-5, atol=1e-5)
    vmapped = jax.jit(jax.vmap(lambda a: tok.detokenize_fn(p, tok.tokenize_fn(p, a)[:2])))(x)
    np.testing.assert_allclose(vmapped, full, rtol=1e-5, atol=1e-5)
    # out-of-range lengths and ids cannot raise inside jit: those examples decode to NaN
    out = np.asarray(jax.jit(tok.detokenize_fn)(p, tokens, np.array([0, 1, 5, 4, 4])))
    assert np.isnan(out[[0, 2]]).all() and np.isfinite(out[[1, 3, 4]]).all()
    bad = tokens.copy()
    bad[3, 0], bad[4, 3] = 36, -1
    out = np.asarray(tok.detokenize_fn(p, bad, np.array([4, 4, 4, 4, 3])))
    assert np.isnan(out[3]).all() and np.isfinite(out[4]).all()  # row 4's bad id is after its prefix
    with pytest.raises(ValueError, match="between 1 and N"):
        tok.detokenize_fn(p, np.zeros((1, 5), np.int32))


def test_save_load_and_registry_fallbacks(tmp_path):
    tok = random_oat()
    x = _actions(4)
    path = tok.save(str(tmp_path / "oat"))
    with open(os.path.join(path, TYPE_FILE)) as f:
        assert json.load(f)["type"] == "oat"
    loaded = load_action_tokenizer(path)
    assert isinstance(loaded, OATTokenizer) and loaded.config == TINY
    tokens, lengths = tok.tokenize(x)
    np.testing.assert_array_equal(loaded.tokenize(x)[0], tokens)
    np.testing.assert_array_equal(loaded.detokenize(tokens, lengths)[0], tok.detokenize(tokens, lengths)[0])
    # a directory without action_tokenizer.json (the first layout) and a workdir holding tokenizer/ load as OAT
    legacy = tok.save(str(tmp_path / "workdir" / "tokenizer"))
    os.remove(os.path.join(legacy, TYPE_FILE))
    from oat_jax import integrity
    integrity.write_manifest(legacy)
    for source in (legacy, str(tmp_path / "workdir")):
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
