"""Shared pieces of the policy tests: a tiny real OAT tokenizer and a tiny policy built on it."""

import jax
import numpy as np

from oat_jax import ActionNormalizer, OATConfig, OATTokenizer
from oat_jax.policy.model import PolicyConfig, init_params
from oat_jax.policy.policy import TokenPolicy
from oat_jax.action_tokenizers import load_action_tokenizer as load_tokenizer

TINY_OAT = dict(horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=32, enc_depth=1, enc_heads=2, dec_width=32,
                dec_depth=1, dec_heads=2, dec_ffn_dim=64, enc_dropout=0.0, dec_dropout=0.0, dec_attn_dropout=0.0)


def save_tiny_oat(path: str, action_dim: int = 4, seed: int = 0) -> str:
    """Saves an untrained tiny OAT tokenizer (random encoder/decoder weights, non-zero heads so tokens vary)."""
    config = OATConfig(action_dim=action_dim, **TINY_OAT)
    tok = OATTokenizer.init(config, jax.random.PRNGKey(seed), ActionNormalizer.identity(action_dim))
    # the heads are zero-initialised (every chunk -> the centre code); give them random weights
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: (jax.random.normal(jax.random.PRNGKey(seed + 1), x.shape) * 0.5
                      if "head" in jax.tree_util.keystr(p) else x), tok.params)
    return OATTokenizer(config, params, tok.normalizer).save(path)


def tiny_policy(tokenizer_path: str, obs_dim: int = 39, seed: int = 0, **kw) -> TokenPolicy:
    """An untrained tiny policy on the tokenizer saved at `tokenizer_path` (identity state normalizer)."""
    tokenizer = load_tokenizer(tokenizer_path)
    fields = dict(vocab_size=tokenizer.vocab_size, max_tokens=tokenizer.max_tokens,
                  variable_length=not tokenizer.fixed_length, obs_dim=obs_dim, n_obs_steps=2, width=32, depth=1,
                  num_heads=2, state_hidden=16, dropout=0.0)
    fields.update(kw)
    config = PolicyConfig(**fields)
    normalizer = ActionNormalizer.identity(obs_dim)
    return TokenPolicy(config, init_params(config, jax.random.PRNGKey(seed)), tokenizer, {"state": normalizer},
                       n_action_steps=4)


def random_obs(batch: int, obs_dim: int = 39, k: int = 2, seed: int = 0) -> dict:
    return {"state": np.random.default_rng(seed).normal(size=(batch, k, obs_dim)).astype(np.float32)}
