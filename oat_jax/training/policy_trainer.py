"""`train_policy(config, workdir)`: trains the autoregressive token policy on a frozen action tokenizer (a
`runner.Runner`).

Run with `python -m experiments.train --config=experiments/configs/policy.py:oat --workdir=...` (config.kind =
"policy"). Steps: get the frozen tokenizer (load `config.tokenizer.path`, or fit Bin/FAST on the train chunks) and
keep a copy in `<workdir>/frozen_tokenizer`, load (observation history, chunk) pairs into memory, fit the
observation normalizer on the train split, tokenize every chunk once, then the shared loop (jitted step over the
device mesh, EMA, held-out token loss, Orbax checkpoints with retention by validation loss) and write the EMA policy
to `<workdir>/policy` (`TokenPolicy.load(workdir)`).

Each checkpoint holds the `policy` item (policy.json's content: config, sampling, observation normalizer, keys) and
the `frozen_tokenizer` item (the copy's directory), so a step loads with `TokenPolicy.load(workdir, step=...)` and a
resumed run does not need the tokenizer's original location.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import jax
import ml_collections
import numpy as np

from oat_jax import artifacts
from oat_jax.action_tokenizers import fit_action_tokenizer, load_action_tokenizer
from oat_jax.eval.subsets import evenly_spaced
from oat_jax.normalizer import Normalizer
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel
from oat_jax.policy.policy import TokenPolicy, policy_metadata
from oat_jax.policy.sampling import SamplingConfig
from oat_jax.training import policy_data
from oat_jax.training.policy_data import camera_fields, check_data_config, observation_keys
from oat_jax.training.loop import config_json
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy_step import (init_policy_state, make_policy_eval_step, make_policy_train_step,
                                          summarize_eval)
from oat_jax.training.runner import Runner, host_value
from oat_jax.training.sharding import process_rows


def frozen_tokenizer(tok_cfg: ml_collections.ConfigDict, train_chunks: np.ndarray | None):
    """The tokenizer named by `config.tokenizer`: loaded from `path`, or fitted (Bin / FAST) on `train_chunks`."""
    if tok_cfg.path:
        return load_action_tokenizer(os.path.expanduser(tok_cfg.path))
    if tok_cfg.fit:
        options = dict(tok_cfg.fit_options.to_dict()) if tok_cfg.get("fit_options") else {}
        return fit_action_tokenizer(tok_cfg.fit, train_chunks, **options)
    raise ValueError("Set config.tokenizer.path (a saved tokenizer directory or an OAT training workdir) or "
                     "config.tokenizer.fit ('bin' | 'fast') to choose the policy's action tokenizer.")


def _policy_config(config: ml_collections.ConfigDict, tokenizer, pairs: dict) -> PolicyConfig:
    m = config.model
    return PolicyConfig(vocab_size=int(tokenizer.vocab_size), max_tokens=int(tokenizer.max_tokens),
                        variable_length=not tokenizer.fixed_length, obs_dim=int(pairs["state"].shape[-1]),
                        **camera_fields(pairs), n_obs_steps=int(config.data.n_obs_steps), width=m.width, depth=m.depth,
                        num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout, state_hidden=m.state_hidden,
                        dtype=m.dtype)


def _arrays(pairs: dict, tokenizer, normalizer: Normalizer) -> dict:
    """Pairs {"actions", "state"[, "image"]} -> {"tokens" (M, max_tokens), "lengths" (M,), "state" normalized
    (M, K, obs)[, "image" uint8 as loaded]}."""
    tokens, lengths = policy_data.tokenize_all(tokenizer, pairs["actions"])
    images = {"image": pairs["image"]} if "image" in pairs else {}
    return {"tokens": tokens, "lengths": lengths, "state": normalizer.normalize(pairs["state"]), **images}


class PolicyRun(Runner):
    """One policy training run: frozen tokenizer, tokenized pairs, observation normalizer, model, jitted steps."""

    kind = "policy"

    def before_checkpoints(self) -> None:
        """Checks of the data config (before anything is created in the workdir)."""
        check_data_config(self.config.data)

    def setup(self) -> None:
        """Tokenizer (and its copy in the workdir), data, normalizer, model, (restored) state, jitted steps."""
        config, workdir, latest = self.config, self.workdir, self.restored_step
        spec = policy_data.policy_spec(config.data)
        k, t0 = int(config.data.n_obs_steps), time.perf_counter()
        train_pairs, saved_policy = None, None
        copy = os.path.join(workdir, artifacts.WORKDIR_FROZEN_TOKENIZER)
        if latest is not None:
            saved = self.ckpt.restore_json(latest)
            if saved[artifacts.RUN_CONFIG_ITEM] != config_json(config):
                logging.warning("Resuming from %s with a config that differs from the checkpoint's; using the new "
                                "one.", workdir)
            saved_policy, copy = artifacts.policy_run_assets(workdir, latest)
            tokenizer = load_action_tokenizer(copy)
        else:
            if config.tokenizer.fit and not config.tokenizer.path:
                train_pairs = policy_data.load_pairs(spec, config.data, "train", int(config.data.horizon), k)
            tokenizer = frozen_tokenizer(config.tokenizer, None if train_pairs is None else train_pairs["actions"])
            if self.is_main:  # no checkpoint refers to a copy yet: replace a stale one of an earlier start
                shutil.rmtree(copy, ignore_errors=True)
                tokenizer.save(copy)
        horizon = int(tokenizer.horizon)
        if not 1 <= int(config.policy.n_action_steps) <= horizon:
            raise ValueError(f"config.policy.n_action_steps={config.policy.n_action_steps} must be in 1..{horizon} "
                             f"(the tokenizer's horizon).")
        if train_pairs is None:
            train_pairs = policy_data.load_pairs(spec, config.data, "train", horizon, k)
        val_pairs = policy_data.load_pairs(spec, config.data, "val", horizon, k)
        if saved_policy is None:
            self.normalizer = Normalizer.fit(train_pairs["state"], config.obs_normalizer.mode)
        else:
            self.normalizer = Normalizer.from_dict(saved_policy["obs_normalizers"]["state"])
        self.tokenizer = tokenizer
        train_arrays = _arrays(train_pairs, tokenizer, self.normalizer)
        self.token_stats = policy_data.token_statistics(train_arrays["tokens"], train_arrays["lengths"],
                                                        tokenizer.vocab_size)
        val_pairs = {name: evenly_spaced(v, int(config.data.max_eval_chunks)) for name, v in val_pairs.items()}
        self.val_arrays = _arrays(val_pairs, tokenizer, self.normalizer)
        self.num_train_pairs = len(train_arrays["tokens"])
        self.pconfig = _policy_config(config, tokenizer, train_pairs)
        self.sampling = SamplingConfig(float(config.sampling.temperature), int(config.sampling.top_k))
        logging.info("Policy data: %d train / %d val pairs, tokenizer %s (%s), targets %s; prepared in %.1f s.",
                     self.num_train_pairs, len(self.val_arrays["tokens"]), tokenizer.name, self.pconfig.max_tokens,
                     {k_: round(v, 3) for k_, v in self.token_stats.items()}, time.perf_counter() - t0)

        model = TokenPolicyModel(self.pconfig)
        tx, schedule = make_optimizer(config.optim, int(config.train.num_steps))
        self.init_state(lambda: init_policy_state(model, tx, int(config.seed)))
        if latest is not None:
            logging.info("Resumed the policy from step %d.", latest)
        self.jitted_train_step = self.jit_train(make_policy_train_step(model, tx, schedule, config.ema))
        self.eval_step = self.jit_eval(make_policy_eval_step(model))
        self.train_batches = policy_data.PairBatches(train_arrays, self.batch_size,
                                                     process_rows(self.batch_sharding, self.batch_size),
                                                     int(config.seed))

    def evaluate(self, params) -> dict[str, float]:
        """Held-out token loss and accuracies of `params` (`policy_step.summarize_eval`)."""
        return summarize_eval(self.weighted_sums(self.eval_step, params, self.val_arrays))

    def progress_fields(self, values: dict[str, float]) -> dict[str, float]:
        """Loss and token accuracy on the progress bar."""
        return {"loss": values["loss"], "acc": values["token_acc"]}

    def eval_line(self, step: int, metrics: dict[str, float]) -> str:
        """'step S: val loss ..., token acc ..., first-token acc ...'."""
        return (f"step {step}: val loss {metrics['val_loss']:.4f}, token acc {metrics['val_token_acc']:.3f}, "
                f"first-token acc {metrics['val_acc_first']:.3f}")

    def _metadata(self) -> dict:
        return policy_metadata(self.pconfig, self.sampling, {"state": self.normalizer},
                               observation_keys(self.config.data), int(self.config.policy.n_action_steps),
                               self.tokenizer.name)

    def assets(self) -> dict[str, dict]:
        """The policy's description and where its frozen tokenizer is (relative to the workdir)."""
        return {artifacts.POLICY_ITEM: self._metadata(),
                artifacts.FROZEN_TOKENIZER_ITEM: {"name": self.tokenizer.name,
                                                  "dir": artifacts.WORKDIR_FROZEN_TOKENIZER}}

    def finish(self, metrics: dict[str, float]) -> None:
        """Writes the EMA policy to `<workdir>/policy` and `final_metrics.json` (with the target token statistics)."""
        if not self.is_main:
            return
        params = jax.tree.map(np.asarray, jax.device_get(self.state.ema_params))
        policy = TokenPolicy(self.pconfig, params, self.tokenizer, {"state": self.normalizer}, self.sampling,
                             observation_keys(self.config.data), int(self.config.policy.n_action_steps))
        policy.save(os.path.join(self.workdir, artifacts.WORKDIR_POLICY), overwrite=True)
        with open(os.path.join(self.workdir, artifacts.FINAL_METRICS_FILE), "w", encoding="utf-8") as f:
            json.dump({"step": int(host_value(self.state.step)), **metrics, "token_stats": self.token_stats,
                       "train_pairs": self.num_train_pairs}, f, indent=1)


def train_policy(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains a policy following `config` (experiments/configs/policy.py) in `workdir`, resuming from its latest
    checkpoint: a token policy, or the Diffusion Policy baseline when config.policy.type is 'diffusion'
    (`oat_jax.training.diffusion_trainer`). Returns the final held-out metrics ({} when stopped by a signal).

    Workdir: checkpoints/, frozen_tokenizer/ (token policies), policy/ (the EMA policy, `TokenPolicy.load(workdir)`
    or `DiffusionPolicy.load`; `oat_jax.policy.load_policy` for either), metrics.jsonl, tb/, final_metrics.json
    (metrics, and the target token statistics of a token policy).
    """
    policy_type = config.policy.get("type", "token")
    if policy_type == "diffusion":
        from oat_jax.training.diffusion_trainer import DiffusionRun
        return DiffusionRun.launch(config, workdir)
    if policy_type != "token":
        raise ValueError(f"config.policy.type={policy_type!r} must be 'token' or 'diffusion'.")
    return PolicyRun.launch(config, workdir)
