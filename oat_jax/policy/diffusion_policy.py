"""`DiffusionPolicy`: a trained Diffusion Policy (the paper's DP baseline) with its action and observation
normalizers; save/load in the policy directory layout of `oat_jax.artifacts` (policy.json + params/, no tokenizer);
act with a jit-compiled DDIM sampler whose number of denoising steps is an argument.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from oat_jax import artifacts
from oat_jax.normalizer import Normalizer
from oat_jax.policy.diffusion import DiffusionConfig, DiffusionPolicyModel, init_params, sample_actions
from oat_jax.policy.policy import dataset_normalizers_from_json, dataset_normalizers_json
from oat_jax.policy.sampling import whole_number
from oat_jax.policy.observations import (check_instructions, check_normalizers, finite_rows, mask_rows,
                                        prepare_observation)

FORMAT = "oat_jax.diffusion_policy/1"
POLICY_TYPE = "diffusion"  # policy.json "type" (token policies: absent or "token")


def diffusion_metadata(config: DiffusionConfig, action_normalizer: Normalizer,
                       obs_normalizers: Mapping[str, Normalizer], obs_keys: Mapping[str, str],
                       n_action_steps: int, instructions: Sequence[str] = (),
                       datasets: Mapping[str, Mapping[str, Normalizer]] | None = None) -> dict:
    """The JSON description of a diffusion policy besides its params (policy.json, and the `policy` item of its
    training run's checkpoints); "instructions" only for a policy with language input, "datasets" ({label:
    {"state", "action"}}) only for a policy trained on a mixture."""
    meta = {"format": FORMAT, "type": POLICY_TYPE, "config": config.to_dict(),
            "action_normalizer": action_normalizer.to_dict(),
            "obs_normalizers": {k: v.to_dict() for k, v in obs_normalizers.items()}, "obs_keys": dict(obs_keys),
            "n_action_steps": int(n_action_steps)}
    if instructions:
        meta["instructions"] = list(instructions)
    if datasets:
        meta["datasets"] = dataset_normalizers_json(datasets)
    return meta


@functools.lru_cache(maxsize=16)
def _sampler(config: DiffusionConfig):
    """jit(params, obs, rng, num_inference_steps static) -> (B, H, D_a) normalized actions, one per config."""
    model = DiffusionPolicyModel(config)
    return jax.jit(functools.partial(sample_actions, model), static_argnums=(3,))


class DiffusionPolicy:
    """Observation history -> action chunk by DDIM denoising (`oat_jax.policy.diffusion`).

    Args:
      config: the denoiser's architecture and noise schedule.
      params: its float32 "params" collection.
      action_normalizer: maps raw actions to the [-1, 1] range the denoiser works in ('limits' mode).
      obs_normalizers: {"state": Normalizer (gaussian)}; images are scaled inside the model.
      obs_keys: {"state": dataset key path, ...}: where each observation comes from (documentation for users).
      n_action_steps: actions of each chunk executed before re-planning.
      instructions: the language instructions of the training data (as `TokenPolicy`).
      datasets: {label: {"state", "action": Normalizer}} of a policy trained on a mixture (act(dataset=label)).
    """

    label = "dp"  # name in tables

    def __init__(self, config: DiffusionConfig, params: Any, action_normalizer: Normalizer,
                 obs_normalizers: Mapping[str, Normalizer], obs_keys: Mapping[str, str] | None = None,
                 n_action_steps: int = 16, instructions: Sequence[str] = (),
                 datasets: Mapping[str, Mapping[str, Normalizer]] | None = None):
        self.config, self.params = config, params
        self.action_normalizer = action_normalizer
        self.obs_normalizers = dict(obs_normalizers)
        self.obs_keys = dict(obs_keys or {"state": "observation/state"})
        self.n_action_steps = int(n_action_steps)
        if not 1 <= self.n_action_steps <= config.horizon:
            raise ValueError(f"n_action_steps={n_action_steps} must be in 1..horizon={config.horizon}.")
        if action_normalizer.action_dim != config.action_dim:
            raise ValueError(f"The action normalizer does not have action_dim={config.action_dim} dimensions.")
        check_normalizers(config, self.obs_normalizers)
        self.instructions = check_instructions(config, instructions)
        self.datasets = {label: dict(entry) for label, entry in (datasets or {}).items()}
        for entry in self.datasets.values():
            check_normalizers(config, entry)

    @property
    def horizon(self) -> int:
        """H of the action chunks."""
        return self.config.horizon

    @property
    def action_dim(self) -> int:
        """D_a."""
        return self.config.action_dim

    def normalize_observation(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw observation dict {"state": (B, K, obs_dim), "image": (B, K, cams, h, w, c) uint8} -> model input."""
        return prepare_observation(self.config, self.obs_normalizers, obs, self.instructions)

    def _member(self, dataset: str | None) -> tuple[Mapping[str, Normalizer], Normalizer]:
        """(observation normalizers, action normalizer) of mixture member `dataset` (None: the first)."""
        if dataset is None:
            return self.obs_normalizers, self.action_normalizer
        if dataset not in self.datasets:
            raise ValueError(f"dataset={dataset!r}: this policy was trained on "
                             f"{sorted(self.datasets) or 'one dataset (leave dataset None)'}.")
        entry = self.datasets[dataset]
        return {**self.obs_normalizers, **{k: v for k, v in entry.items() if k == "state"}}, entry["action"]

    def act(self, obs: Mapping[str, np.ndarray], rng: jax.Array, num_tokens: int | None = None,
            num_inference_steps: int | None = None, dataset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw observations (batch B) -> action chunks (B, H, D_a) float32 raw units, valid (B,) bool (False, with a
        NaN chunk, for an observation row holding NaN/Inf).

        num_inference_steps: DDIM steps (None = config.num_inference_steps; each value compiles once).
        num_tokens: must be None (the token policies' anytime-decoding argument; a diffusion policy has no tokens).
        dataset: for a policy trained on a mixture, the member whose units observations and actions are in.
        """
        if num_tokens is not None:
            raise ValueError(f"num_tokens={num_tokens}: a diffusion policy generates no tokens; leave it None.")
        steps = (self.config.num_inference_steps if num_inference_steps is None
                 else whole_number(num_inference_steps, "num_inference_steps"))
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps={steps} must be in 1..{self.config.num_train_timesteps}.")
        obs_normalizers, action_normalizer = self._member(dataset)
        model_obs = prepare_observation(self.config, obs_normalizers, obs, self.instructions)
        normalized = _sampler(self.config)(self.params, model_obs, rng, steps)
        actions = action_normalizer.unnormalize(np.asarray(normalized, np.float32))
        return mask_rows(np.asarray(actions, np.float32), finite_rows(obs))

    # ----- persistence -----
    def metadata(self) -> dict:
        """The JSON content of policy.json (see `diffusion_metadata`)."""
        return diffusion_metadata(self.config, self.action_normalizer, self.obs_normalizers, self.obs_keys,
                                  self.n_action_steps, self.instructions, self.datasets)

    def save(self, path: str, overwrite: bool = False) -> str:
        """Writes policy.json and params/ to directory `path` (atomically, as `TokenPolicy.save`); returns its path."""
        return artifacts.write_policy(path, self.metadata(), self.params, None, overwrite=overwrite)

    @classmethod
    def load(cls, path: str, step=None, verify: bool = True) -> "DiffusionPolicy":
        """Loads a diffusion policy: a policy directory, a training workdir (its `policy/`; with `step` 'latest',
        'best' or an int: the EMA params of that checkpoint) or a checkpoint step directory.
        Raises FileNotFoundError when no saved policy is there, ValueError when it is a token policy."""
        meta, params, _ = artifacts.read_policy(path, step, _abstract_params, verify=verify)
        return cls(DiffusionConfig.from_dict(meta["config"]), params, Normalizer.from_dict(meta["action_normalizer"]),
                   {k: Normalizer.from_dict(v) for k, v in meta["obs_normalizers"].items()}, meta.get("obs_keys"),
                   meta.get("n_action_steps", 16), meta.get("instructions", ()),
                   dataset_normalizers_from_json(meta.get("datasets")))

    def __repr__(self) -> str:
        c = self.config
        return (f"DiffusionPolicy(horizon={c.horizon}, action_dim={c.action_dim}, width={c.embed_dim}, "
                f"depth={c.depth}, ddim_steps={c.num_inference_steps}/{c.num_train_timesteps})")


def _abstract_params(meta: dict) -> Any:
    """ShapeDtypeStruct tree of the params of the diffusion policy described by policy.json content `meta`;
    ValueError for a token policy's."""
    if meta.get("type") != POLICY_TYPE:
        raise ValueError("This is a token policy; load it with TokenPolicy.load (or oat_jax.policy.load_policy for "
                         "either kind).")
    config = DiffusionConfig.from_dict(meta["config"])
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
