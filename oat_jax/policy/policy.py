"""`TokenPolicy`: a trained policy bundled with its frozen tokenizer and observation normalizer; save/load; act.

A saved policy directory (`oat_jax.artifacts`): policy.json (`policy_metadata`), params/ (the EMA params) and
tokenizer/ (the frozen action tokenizer, any type); self-contained. `TokenPolicy.load` also reads a policy
training workdir (its `policy/`, or a checkpoint step with `step=`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from oat_jax import artifacts
from oat_jax.action_tokenizers import ActionTokenizer, load_action_tokenizer
from oat_jax.normalizer import Normalizer
from oat_jax.policy.model import PolicyConfig, abstract_params
from oat_jax.policy.observations import (check_instructions, check_normalizers, finite_rows, mask_rows,
                                        prepare_observation)
from oat_jax.policy.sampling import SamplingConfig, make_sampler

FORMAT = "oat_jax.policy/1"


def policy_metadata(config: PolicyConfig, sampling: SamplingConfig, obs_normalizers: Mapping[str, Normalizer],
                    obs_keys: Mapping[str, str], n_action_steps: int, tokenizer_name: str,
                    instructions: Sequence[str] = (),
                    datasets: Mapping[str, Mapping[str, Normalizer]] | None = None) -> dict:
    """The JSON description of a policy besides its params and tokenizer (policy.json, and the `policy` item of a
    policy run's checkpoints); "instructions" (the language vocabulary) only for a policy with language input,
    "datasets" ({label: {"state": normalizer}}) only for a policy trained on a mixture."""
    meta = {"format": FORMAT, "config": config.to_dict(), "sampling": dataclasses.asdict(sampling),
            "obs_normalizers": {k: v.to_dict() for k, v in obs_normalizers.items()}, "obs_keys": dict(obs_keys),
            "n_action_steps": int(n_action_steps), "tokenizer_name": tokenizer_name}
    if instructions:
        meta["instructions"] = list(instructions)
    if datasets:
        meta["datasets"] = dataset_normalizers_json(datasets)
    return meta


def dataset_normalizers_json(datasets: Mapping[str, Mapping[str, Normalizer]]) -> dict:
    """{label: {kind: normalizer}} -> JSON-able {label: {kind: dict}}."""
    return {label: {k: n.to_dict() for k, n in entry.items()} for label, entry in datasets.items()}


def dataset_normalizers_from_json(entries: Mapping[str, Mapping[str, dict]] | None) -> dict:
    """The inverse of `dataset_normalizers_json` (None or {} -> {})."""
    return {label: {k: Normalizer.from_dict(d) for k, d in entry.items()} for label, entry in (entries or {}).items()}


class TokenPolicy:
    """Observation history -> action chunk, by sampling tokens and detokenizing them.

    Args:
      config: the network's architecture.
      params: its float32 "params" collection.
      tokenizer: the frozen `ActionTokenizer` the policy was trained on (`OATTokenizer`, Bin or FAST).
      obs_normalizers: {"state": Normalizer (gaussian) over obs_dim}; images are scaled inside the model.
      sampling: temperature and top-k.
      obs_keys: {"state": dataset key paths joined by ',', "image": camera keys, "language": instruction key}:
        where each observation comes from.
      n_action_steps: actions of each chunk executed before re-planning.
      instructions: the language instructions of the training data (config.num_instructions of them; id i + 1 is
        instructions[i]); act() takes obs["language"] from them.
      datasets: {label: {"state": Normalizer}} of a policy trained on a mixture: act(..., dataset=label) reads
        that member's units (its state normalizer and, for a tokenizer trained on the mixture, its action units);
        without `dataset` the first member's (`obs_normalizers`).
    """

    def __init__(self, config: PolicyConfig, params: Any, tokenizer: ActionTokenizer,
                 obs_normalizers: Mapping[str, Normalizer],
                 sampling: SamplingConfig = SamplingConfig(), obs_keys: Mapping[str, str] | None = None,
                 n_action_steps: int = 16, instructions: Sequence[str] = (),
                 datasets: Mapping[str, Mapping[str, Normalizer]] | None = None):
        self.config, self.params, self.sampling = config, params, sampling
        if not isinstance(tokenizer, ActionTokenizer):
            raise ValueError(f"{type(tokenizer).__name__} does not implement oat_jax.action_tokenizers."
                             f"ActionTokenizer (vocab_size, max_tokens, fixed_length, horizon, action_dim, tokenize, "
                             f"detokenize, save).")
        self.tokenizer = tokenizer
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
        check_normalizers(config, self.obs_normalizers)
        self.instructions = check_instructions(config, instructions)
        self.datasets = {label: dict(entry) for label, entry in (datasets or {}).items()}
        for entry in self.datasets.values():
            check_normalizers(config, entry)
        self.sampler = make_sampler(config, sampling)

    def with_sampling(self, sampling: SamplingConfig) -> "TokenPolicy":
        """The same policy (params, tokenizer, normalizers shared) drawing tokens with `sampling`."""
        return TokenPolicy(self.config, self.params, self.tokenizer, self.obs_normalizers, sampling, self.obs_keys,
                           self.n_action_steps, self.instructions, self.datasets)

    @property
    def label(self) -> str:
        """Name in tables: the tokenizer's name."""
        return self.tokenizer.name

    @property
    def horizon(self) -> int:
        """H of the action chunks."""
        return self.tokenizer.horizon

    @property
    def action_dim(self) -> int:
        """D_a."""
        return self.tokenizer.action_dim

    def _normalizers(self, dataset: str | None) -> Mapping[str, Normalizer]:
        if dataset is None:
            return self.obs_normalizers
        if dataset not in self.datasets:
            raise ValueError(f"dataset={dataset!r}: this policy was trained on "
                             f"{sorted(self.datasets) or 'one dataset (leave dataset None)'}.")
        return {**self.obs_normalizers, **self.datasets[dataset]}

    def normalize_observation(self, obs: Mapping[str, np.ndarray], dataset: str | None = None
                              ) -> dict[str, np.ndarray]:
        """Raw observation dict {"state": (B, K, obs_dim), "image": (B, K, cams, h, w, c) uint8, "language": (B,)
        strings} -> model input (states in the units of mixture member `dataset`, default the first)."""
        return prepare_observation(self.config, self._normalizers(dataset), obs, self.instructions)

    def sample_tokens(self, obs: Mapping[str, np.ndarray], rng: jax.Array, num_tokens: int | None = None,
                      dataset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw observations (batch B) -> tokens (B, max_tokens) int32 (PAD_ID-padded), lengths (B,) int32."""
        tokens, lengths = self.sampler(self.params, self.normalize_observation(obs, dataset), rng, num_tokens)
        return np.asarray(tokens), np.asarray(lengths)

    def act(self, obs: Mapping[str, np.ndarray], rng: jax.Array, num_tokens: int | None = None,
            dataset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw observations -> action chunks (B, H, D_a) float32 raw units, valid (B,) bool.

        num_tokens: None (all max_tokens) or k in 1..max_tokens: generate k tokens and decode that prefix (OAT_k).
        dataset: for a policy trained on a mixture, the member whose units the observations and actions are in
          (`policy.datasets`; None = the first member).
        An invalid sequence (e.g. FAST that fails to decode), or an observation row holding NaN/Inf, gives a NaN
        chunk and valid False.
        """
        tokens, lengths = self.sample_tokens(obs, rng, num_tokens, dataset)
        tokenizer = self.tokenizer
        if dataset is not None and dataset in (getattr(tokenizer, "dataset_normalizers", None) or {}):
            tokenizer = tokenizer.for_dataset(dataset)
        actions, valid = tokenizer.detokenize(tokens, lengths)
        return mask_rows(np.asarray(actions, np.float32), np.asarray(valid, bool) & finite_rows(obs))

    # ----- persistence -----
    def metadata(self) -> dict:
        """The JSON content of policy.json (see `policy_metadata`)."""
        return policy_metadata(self.config, self.sampling, self.obs_normalizers, self.obs_keys, self.n_action_steps,
                               self.tokenizer.name, self.instructions, self.datasets)

    def save(self, path: str, overwrite: bool = False) -> str:
        """Writes policy.json, params/ and tokenizer/ to directory `path`; returns its absolute path.

        overwrite replaces an existing saved policy only; the new directory is swapped in when complete, so a crash
        leaves the old policy or the new one.
        """
        return artifacts.write_policy(path, self.metadata(), self.params, self.tokenizer.save, overwrite=overwrite)

    @classmethod
    def load(cls, path: str, step=None, sampling: SamplingConfig | None = None, verify: bool = True) -> "TokenPolicy":
        """Loads a policy: a policy directory, a policy training workdir (its `policy/`; with `step` 'latest',
        'best' or an int: the EMA params of that checkpoint) or a checkpoint step directory.

        sampling: overrides the saved sampling settings (None keeps them).
        verify: check every file (tokenizer included) against the hashes recorded at save time.
        Raises FileNotFoundError when no saved policy is there.
        """
        meta, params, tokenizer_dir = artifacts.read_policy(path, step, _abstract_params, verify=verify)
        normalizers = {k: Normalizer.from_dict(v) for k, v in meta["obs_normalizers"].items()}
        return cls(PolicyConfig.from_dict(meta["config"]), params, load_action_tokenizer(tokenizer_dir), normalizers,
                   sampling or SamplingConfig(**meta["sampling"]), meta.get("obs_keys"), meta.get("n_action_steps", 16),
                   meta.get("instructions", ()), dataset_normalizers_from_json(meta.get("datasets")))

    def __repr__(self) -> str:
        c = self.config
        return (f"TokenPolicy(tokenizer={self.tokenizer.name!r}, vocab={c.vocab_size}, max_tokens={c.max_tokens}, "
                f"width={c.width}, depth={c.depth}, n_obs_steps={c.n_obs_steps})")


def _abstract_params(meta: dict) -> Any:
    """ShapeDtypeStruct tree of the params of the token policy described by policy.json content `meta`;
    ValueError for a diffusion policy's."""
    if meta.get("type", "token") != "token":
        raise ValueError(f"This is a {meta['type']} policy, not a token policy; load it with "
                         f"oat_jax.policy.load_policy (any kind) or its class's load.")
    return abstract_params(PolicyConfig.from_dict(meta["config"]))
