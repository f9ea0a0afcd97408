"""`DiffusionRun`: trains the Diffusion Policy baseline (a `runner.Runner`, the token policy's data and loop).

Run with `python -m experiments.train --config=experiments/configs/policy.py:dp --workdir=...` (config.kind =
"policy", config.policy.type = "diffusion"). Steps: load the (observation history, chunk) pairs of the token policy,
fit the observation normalizer ('gaussian') and the action normalizer ('limits': actions to [-1, 1], as the
reference DP) on the train split, then the shared loop (jitted step over the device mesh, EMA, held-out denoising
loss and sampled-chunk MSE, Orbax checkpoints with retention by validation loss), and write the EMA policy to
`<workdir>/policy` (`DiffusionPolicy.load(workdir)`, or `oat_jax.policy.load_policy`).

Each checkpoint holds the `policy` item (policy.json's content), so a step loads with
`DiffusionPolicy.load(workdir, step=...)` and a resumed run keeps its normalizers.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from oat_jax import artifacts
from oat_jax.eval.subsets import evenly_spaced
from oat_jax.normalizer import Normalizer
from oat_jax.policy.diffusion import DiffusionConfig, DiffusionPolicyModel
from oat_jax.policy.diffusion_policy import DiffusionPolicy, diffusion_metadata
from oat_jax.training import policy_data
from oat_jax.training.policy_data import camera_fields, check_data_config, observation_keys
from oat_jax.training.diffusion_step import (init_diffusion_state, make_diffusion_eval_step,
                                             make_diffusion_train_step, summarize_diffusion_eval)
from oat_jax.training.loop import config_json
from oat_jax.training.optim import make_optimizer
from oat_jax.training.runner import Runner, host_value
from oat_jax.training.sharding import process_rows


def diffusion_config(config: ml_collections.ConfigDict, pairs: dict) -> DiffusionConfig:
    """The DiffusionConfig of a run on `pairs` (their action, state and camera shapes): the policy model sizes of
    `config.model`, the schedule of `config.diffusion`."""
    m, d = config.model, config.diffusion
    return DiffusionConfig(action_dim=int(pairs["actions"].shape[-1]), horizon=int(config.data.horizon),
                           obs_dim=int(pairs["state"].shape[-1]), **camera_fields(pairs),
                           n_obs_steps=int(config.data.n_obs_steps), embed_dim=m.width, depth=m.depth,
                           num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                           state_hidden=m.state_hidden, num_train_timesteps=d.num_train_timesteps,
                           num_inference_steps=d.num_inference_steps, prediction_type=d.prediction_type,
                           clip_sample=d.clip_sample, causal_attn=d.causal_attn, dtype=m.dtype)


class DiffusionRun(Runner):
    """One Diffusion Policy training run: pairs, normalizers, denoiser, jitted steps."""

    kind = "policy"
    run_items = artifacts.DIFFUSION_RUN_ITEMS

    def before_checkpoints(self) -> None:
        """Checks of the data config (before anything is created in the workdir)."""
        check_data_config(self.config.data)

    def setup(self) -> None:
        """Data, normalizers (fitted, or restored with the run), model, (restored) state, jitted steps."""
        config, latest = self.config, self.restored_step
        spec = policy_data.policy_spec(config.data)
        k, horizon, t0 = int(config.data.n_obs_steps), int(config.data.horizon), time.perf_counter()
        if not 1 <= int(config.policy.n_action_steps) <= horizon:
            raise ValueError(f"config.policy.n_action_steps={config.policy.n_action_steps} must be in 1..{horizon} "
                             f"(config.data.horizon).")
        train_pairs = policy_data.load_pairs(spec, config.data, "train", horizon, k)
        val_pairs = policy_data.load_pairs(spec, config.data, "val", horizon, k)
        if latest is None:
            self.obs_normalizer = Normalizer.fit(train_pairs["state"], config.obs_normalizer.mode)
            self.action_normalizer = Normalizer.fit(train_pairs["actions"], config.action_normalizer.mode)
        else:
            saved = self.ckpt.restore_json(latest, (artifacts.POLICY_ITEM,))
            if saved[artifacts.RUN_CONFIG_ITEM] != config_json(config):
                logging.warning("Resuming from %s with a config that differs from the checkpoint's; using the new "
                                "one.", self.workdir)
            meta = saved[artifacts.POLICY_ITEM]
            self.obs_normalizer = Normalizer.from_dict(meta["obs_normalizers"]["state"])
            self.action_normalizer = Normalizer.from_dict(meta["action_normalizer"])
        arrays = lambda pairs: {"actions": self.action_normalizer.normalize(pairs["actions"]).astype(np.float32),
                                "state": self.obs_normalizer.normalize(pairs["state"]),
                                **({"image": pairs["image"]} if "image" in pairs else {})}  # noqa: E731
        train_arrays = arrays(train_pairs)
        val_pairs = {name: evenly_spaced(v, int(config.data.max_eval_chunks)) for name, v in val_pairs.items()}
        self.val_arrays = {**arrays(val_pairs), "seed": np.arange(len(val_pairs["actions"]), dtype=np.int32)}
        self.num_train_pairs = len(train_arrays["actions"])
        self.dconfig = diffusion_config(config, train_pairs)
        logging.info("Diffusion policy data: %d train / %d val pairs; prepared in %.1f s.", self.num_train_pairs,
                     len(self.val_arrays["actions"]), time.perf_counter() - t0)

        model = DiffusionPolicyModel(self.dconfig)
        tx, schedule = make_optimizer(config.optim, int(config.train.num_steps))
        self.init_state(lambda: init_diffusion_state(model, tx, int(config.seed)))
        if latest is not None:
            logging.info("Resumed the diffusion policy from step %d.", latest)
        self.jitted_train_step = self.jit_train(make_diffusion_train_step(model, tx, schedule, config.ema))
        self.eval_step = self.jit_eval(make_diffusion_eval_step(model, int(config.diffusion.eval_sample_steps)))
        self.train_batches = policy_data.PairBatches(train_arrays, self.batch_size,
                                                     process_rows(self.batch_sharding, self.batch_size),
                                                     int(config.seed))

    def evaluate(self, params) -> dict[str, float]:
        """Held-out denoising loss and sampled-chunk MSE of `params` (`summarize_diffusion_eval`)."""
        return summarize_diffusion_eval(self.weighted_sums(self.eval_step, params, self.val_arrays))

    def progress_fields(self, values: dict[str, float]) -> dict[str, float]:
        """Loss on the progress bar."""
        return {"loss": values["loss"]}

    def eval_line(self, step: int, metrics: dict[str, float]) -> str:
        """'step S: val denoising loss ..., sampled-chunk MSE ...'."""
        line = f"step {step}: val denoising loss {metrics['val_loss']:.4f}"
        if "val_sample_mse" in metrics:
            line += f", sampled-chunk MSE {metrics['val_sample_mse']:.4f} (normalized)"
        return line

    def _metadata(self) -> dict:
        return diffusion_metadata(self.dconfig, self.action_normalizer, {"state": self.obs_normalizer},
                                  observation_keys(self.config.data), int(self.config.policy.n_action_steps))

    def assets(self) -> dict[str, dict]:
        """The policy's description (config and normalizers)."""
        return {artifacts.POLICY_ITEM: self._metadata()}

    def finish(self, metrics: dict[str, float]) -> None:
        """Writes the EMA policy to `<workdir>/policy` and `final_metrics.json`."""
        if not self.is_main:
            return
        params = jax.tree.map(np.asarray, jax.device_get(self.state.ema_params))
        policy = DiffusionPolicy(self.dconfig, params, self.action_normalizer, {"state": self.obs_normalizer},
                                 observation_keys(self.config.data), int(self.config.policy.n_action_steps))
        policy.save(os.path.join(self.workdir, artifacts.WORKDIR_POLICY), overwrite=True)
        with open(os.path.join(self.workdir, artifacts.FINAL_METRICS_FILE), "w", encoding="utf-8") as f:
            json.dump({"step": int(host_value(self.state.step)), **metrics, "train_pairs": self.num_train_pairs},
                      f, indent=1)
