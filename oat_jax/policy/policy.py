"""`TokenPolicy`: a trained policy bundled with its frozen tokenizer and observation normalizer; save/load; act.

Layout of a saved policy directory (self-contained: nothing refers to the tokenizer's training workdir):
    <dir>/policy.json    PolicyConfig, SamplingConfig, observation normalizers, observation keys, n_action_steps
    <dir>/params/        Orbax StandardCheckpointer checkpoint of the float32 (EMA) params
    <dir>/tokenizer/     the frozen action tokenizer (`ActionTokenizer.save`)
A training workdir holding such a directory as `<workdir>/policy/` is accepted by `load` too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from oat_jax import integrity
from oat_jax.atomic_dir import atomic_directory
from oat_jax.checkpoint import restore_params, save_params
from oat_jax.normalizer import ActionNormalizer
from oat_jax.policy.model import PolicyConfig, abstract_params
from oat_jax.policy.sampling import SamplingConfig, make_sampler
from oat_jax.policy.tokenizer_io import as_action_tokenizer, load_tokenizer

POLICY_FILE = "policy.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
WORKDIR_SUBDIR = "policy"  # <workdir>/policy: the exported EMA policy of a training run
FORMAT = "oat_jax.policy/1"


class TokenPolicy:
    """Observation history -> action chunk, by sampling tokens and detokenizing them.

    Args:
      config: the network's architecture.
      params: its float32 "params" collection.
      tokenizer: the frozen `ActionTokenizer` the policy was trained on (an `OATTokenizer` is wrapped).
      obs_normalizers: {"state": ActionNormalizer (gaussian) over obs_dim}; images are scaled inside the model.
      sampling: temperature and top-k.
      obs_keys: {"state": dataset key path, ...}: where each observation comes from (documentation for users).
      n_action_steps: actions of each chunk executed before re-planning.
    """

    def __init__(self, config: PolicyConfig, params: Any, tokenizer, obs_normalizers: Mapping[str, ActionNormalizer],
                 sampling: SamplingConfig = SamplingConfig(), obs_keys: Mapping[str, str] | None = None,
                 n_action_steps: int = 16):
        self.config, self.params, self.sampling = config, params, sampling
        self.tokenizer = as_action_tokenizer(tokenizer)
        self.obs_normalizers = dict(obs_normalizers)
        self.obs_keys = dict(obs_keys or {"state": "observation/state"})
        self.n_action_steps = int(n_action_steps)
        t = self.tokenizer
        if (t.vocab_size, t.max_tokens, not t.fixed_length) != (config.vocab_size, config.max_tokens,
                                                                config.variable_length):
            raise ValueError(f"The tokenizer (vocab {t.vocab_size}, max_tokens {t.max_tokens}, fixed_length "
                             f"{t.fixed_length}) does not match the policy config (vocab {config.vocab_size}, "
                             f"max_tokens {config.max_tokens}, variable_length {config.variable_length}).")
        if not 1 <= self.n_action_steps <= t.horizon:
            raise ValueError(f"n_action_steps={n_action_steps} must be in 1..horizon={t.horizon}.")
        self.sampler = make_sampler(config, sampling)

    @property
    def horizon(self) -> int:
        """H of the action chunks."""
        return self.tokenizer.horizon

    @property
    def action_dim(self) -> int:
        """D_a."""
        return self.tokenizer.action_dim

    def normalize_observation(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw observation dict {"state": (B, K, obs_dim), "image": (B, K, cams, h, w, c) uint8} -> model input."""
        c = self.config
        out = {}
        if c.obs_dim:
            state = np.asarray(obs["state"], np.float32)
            if state.ndim != 3 or state.shape[1:] != (c.n_obs_steps, c.obs_dim):
                raise ValueError(f"obs['state'] must have shape (B, {c.n_obs_steps}, {c.obs_dim}) = (batch, "
                                 f"n_obs_steps, obs_dim), got {state.shape}.")
            norm = self.obs_normalizers.get("state")
            out["state"] = norm.normalize(state) if norm is not None else state
        if c.num_cameras:
            image = np.asarray(obs["image"])
            expected = (c.n_obs_steps, c.num_cameras) + c.image_shape
            if image.ndim != 6 or image.shape[1:] != expected:
                raise ValueError(f"obs['image'] must have shape (B,) + {expected}, got {image.shape}.")
            out["image"] = image
        return out

    def sample_tokens(self, obs: Mapping[str, np.ndarray], rng: jax.Array,
                      num_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw observations (batch B) -> tokens (B, max_tokens) int32 (PAD_ID-padded), lengths (B,) int32."""
        tokens, lengths = self.sampler(self.params, self.normalize_observation(obs), rng, num_tokens)
        return np.asarray(tokens), np.asarray(lengths)

    def act(self, obs: Mapping[str, np.ndarray], rng: jax.Array,
            num_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw observations -> action chunks (B, H, D_a) float32 raw units, valid (B,) bool.

        num_tokens: None (all max_tokens) or k in 1..max_tokens: generate k tokens and decode that prefix (OAT_k).
        An invalid sequence (e.g. FAST that fails to decode) gives a NaN chunk and valid False.
        """
        tokens, lengths = self.sample_tokens(obs, rng, num_tokens)
        actions, valid = self.tokenizer.detokenize(tokens, lengths)
        return np.asarray(actions, np.float32), np.asarray(valid, bool)

    # ----- persistence -----
    def metadata(self) -> dict:
        """The JSON content of policy.json."""
        return {"format": FORMAT, "config": self.config.to_dict(), "sampling": dataclasses.asdict(self.sampling),
                "obs_normalizers": {k: v.to_dict() for k, v in self.obs_normalizers.items()},
                "obs_keys": self.obs_keys, "n_action_steps": self.n_action_steps,
                "tokenizer_name": self.tokenizer.name}

    def save(self, path: str, overwrite: bool = False) -> str:
        """Writes policy.json, params/ and tokenizer/ to directory `path`; returns its absolute path.

        overwrite replaces an existing saved policy only; the new directory is swapped in when complete
        (`oat_jax.atomic_dir`), so a crash leaves the old policy or the new one.
        """
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        recognise = lambda d: os.path.isfile(os.path.join(d, POLICY_FILE))  # noqa: E731
        with atomic_directory(path, overwrite, recognise=recognise, what="policy") as tmp:
            save_params(os.path.join(tmp, PARAMS_DIR), self.params)
            self.tokenizer.save(os.path.join(tmp, TOKENIZER_DIR))
            with open(os.path.join(tmp, POLICY_FILE), "w", encoding="utf-8") as f:
                json.dump(self.metadata(), f, indent=1)
            integrity.write_manifest(tmp)
        return path

    @classmethod
    def load(cls, path: str, sampling: SamplingConfig | None = None, verify: bool = True) -> "TokenPolicy":
        """Loads a saved policy (a policy directory or a training workdir holding `policy/`).

        sampling: overrides the saved sampling settings (None keeps them).
        verify: check every file (tokenizer included) against the hashes recorded at save time.
        Raises FileNotFoundError when no saved policy is there.
        """
        path = resolve_policy_dir(path)
        if verify:
            integrity.verify(path, "policy")
        with open(os.path.join(path, POLICY_FILE), encoding="utf-8") as f:
            meta = json.load(f)
        config = PolicyConfig.from_dict(meta["config"])
        params = restore_params(os.path.join(path, PARAMS_DIR), abstract_params(config))
        tokenizer = load_tokenizer(os.path.join(path, TOKENIZER_DIR))
        normalizers = {k: ActionNormalizer.from_dict(v) for k, v in meta["obs_normalizers"].items()}
        return cls(config, params, tokenizer, normalizers, sampling or SamplingConfig(**meta["sampling"]),
                   meta.get("obs_keys"), meta.get("n_action_steps", 16))

    def __repr__(self) -> str:
        c = self.config
        return (f"TokenPolicy(tokenizer={self.tokenizer.name!r}, vocab={c.vocab_size}, max_tokens={c.max_tokens}, "
                f"width={c.width}, depth={c.depth}, n_obs_steps={c.n_obs_steps})")


def resolve_policy_dir(path: str) -> str:
    """Absolute policy directory for `path` (a policy directory or a workdir holding `policy/`)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    for candidate in (path, os.path.join(path, WORKDIR_SUBDIR)):
        if os.path.exists(os.path.join(candidate, POLICY_FILE)):
            return candidate
    raise FileNotFoundError(f"No saved policy at {path!r}: expected {POLICY_FILE} there or in its {WORKDIR_SUBDIR}/ "
                            f"subdirectory (training writes <workdir>/{WORKDIR_SUBDIR} at the end of a run).")


def load_policy(path: str, sampling: SamplingConfig | None = None) -> TokenPolicy:
    """`TokenPolicy.load(path, sampling)`."""
    return TokenPolicy.load(path, sampling)
