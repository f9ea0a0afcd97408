"""`train_and_evaluate(config, workdir)`: trains the Diffusion Policy baseline on the token policy's data.

Run with `python -m experiments.train --config=experiments/configs/policy.py:dp --workdir=...` (config.kind =
"policy", config.policy.type = "diffusion"). Steps: fit the observation normalizer ('gaussian') and the action
normalizer ('limits': actions to [-1, 1], as the reference DP) on the train split's frames, then the loop over the
token policy's (observation history, chunk) pairs (`policy/data.py`: in memory or streamed) with EMA, held-out
denoising loss and sampled-chunk MSE, Orbax checkpoints with retention by validation loss, and write the EMA policy to
`<workdir>/policy` (`DiffusionPolicy.load(workdir)`, or `oat_jax.policy.load_policy`).

Each checkpoint holds the `policy` item (policy.json's content), so a step loads with
`DiffusionPolicy.load(workdir, step=...)` and a resumed run keeps its normalizers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import jax
import ml_collections
from jax.experimental import multihost_utils
import numpy as np

from oat_jax import artifacts
from oat_jax.policy.diffusion import DiffusionConfig, DiffusionPolicyModel
from oat_jax.policy.diffusion_policy import DiffusionPolicy, diffusion_metadata
from oat_jax.training import loop, run_config
from oat_jax.training.policy import data as policy_data
from oat_jax.training.faults import StopRequest
from oat_jax.training.policy.data import check_action_steps, check_data_config, observation_keys
from oat_jax.training.progress import Progress
from oat_jax.training.policy.diffusion_step import (init_diffusion_state, make_diffusion_eval_step,
                                             make_diffusion_train_step, summarize_diffusion_eval)
from oat_jax.training.optim import make_optimizer
from oat_jax.training.sharding import process_rows


def diffusion_config(config: run_config.PolicyRun, pairs: dict, num_instructions: int = 0) -> DiffusionConfig:
    """The DiffusionConfig of a run on `pairs` (their action, state and camera shapes): the policy model sizes of
    `config.model`, the schedule of `config.diffusion`."""
    m, d = config.model, config.diffusion
    return DiffusionConfig(action_dim=int(pairs["actions"].shape[-1]), horizon=int(config.data.horizon),
                           **policy_data.observation_fields(pairs), num_instructions=num_instructions,
                           n_obs_steps=int(config.data.n_obs_steps), embed_dim=m.width, depth=m.depth,
                           num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                           state_hidden=m.state_hidden, num_train_timesteps=d.num_train_timesteps,
                           num_inference_steps=d.num_inference_steps, prediction_type=d.prediction_type,
                           clip_sample=d.clip_sample, causal_attn=d.causal_attn, dtype=m.dtype)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains the Diffusion Policy baseline following `config` (experiments/configs/policy.py:dp) in `workdir`,
    resuming from its latest checkpoint; the loop reads top to bottom. Returns the final held-out metrics ({} when
    stopped by a signal: the current step is checkpointed and the same command resumes)."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    with loop.setup_errors():  # the typed config; a field error names config.<section>.<field>
        run = run_config.policy_run(config)
    run_json = run_config.to_json(run)
    is_main, num_steps = jax.process_index() == 0, int(run.train.num_steps)
    batch_size = int(run.train.batch_size)
    with contextlib.ExitStack() as closing:
        with loop.setup_errors():  # a config or data error here prints as one line
            mesh, batch_sharding = loop.mesh_and_batch_sharding(run)
            check_data_config(run.data)  # before anything is written in the workdir
            ckpt = closing.enter_context(loop.checkpoint_store(run, workdir, artifacts.DIFFUSION_RUN_ITEMS,
                                                               artifacts.BEST_METRIC["policy"]))
            latest, t0 = ckpt.latest_step(), time.perf_counter()
            loop.check_run_kind(ckpt, latest, "policy", workdir)
            k, horizon = int(run.data.n_obs_steps), int(run.data.horizon)
            check_action_steps(run, horizon, "config.data.horizon")
            labels = policy_data.member_labels(run.data)
            if latest is None:  # fitted on the train split, per member of a mixture
                vocabulary = tuple(policy_data.instructions(run.data))
                state_normalizers, action_normalizers = policy_data.fit_normalizers(
                    run.data, run.obs_normalizer.mode, run.action_normalizer.mode)
            else:  # the normalizers and instructions stay the ones the checkpoint was trained with
                saved = ckpt.restore_json(latest, (artifacts.POLICY_ITEM,))
                loop.warn_if_config_changed(saved[artifacts.RUN_CONFIG_ITEM], run_json, workdir)
                meta = saved[artifacts.POLICY_ITEM]
                vocabulary = tuple(meta.get("instructions", ()))
                state_normalizers = policy_data.saved_normalizers(meta, labels, "state")
                action_normalizers = policy_data.saved_normalizers(meta, labels, "action")
            obs_normalizers = {} if state_normalizers is None else {"state": state_normalizers[0]}
            action_normalizer = action_normalizers[0]  # the first member's
            members = policy_data.member_normalizers(labels, state_normalizers, action_normalizers)

            def arrays(pairs: dict) -> dict:  # normalized actions and states, images and instructions as read
                return {**policy_data.observations(pairs, state_normalizers),
                        "actions": policy_data.by_member(pairs["actions"], pairs["dataset_index"],
                                                         action_normalizers)}

            val_pairs = policy_data.eval_pairs(run.data, horizon, k, vocabulary)
            val_arrays = {**arrays(val_pairs), "seed": np.arange(len(val_pairs["actions"]), dtype=np.int32)}
            dconfig = diffusion_config(run, val_pairs, len(vocabulary))

            model = DiffusionPolicyModel(dconfig)
            tx, schedule = make_optimizer(run.optim, num_steps)
            state, state_sharding = loop.init_or_restore(lambda: init_diffusion_state(model, tx, int(run.seed)),
                                                         mesh, run.sharding, ckpt, latest)
            if latest is not None:
                logging.info("Resumed the diffusion policy from step %d.", latest)
            train_step = loop.jit_train_step(make_diffusion_train_step(model, tx, schedule, run.ema),
                                             state_sharding, batch_sharding)
            eval_step = loop.jit_eval_step(make_diffusion_eval_step(model, int(run.diffusion.eval_sample_steps)),
                                           state_sharding.ema_params, batch_sharding)
            start = int(loop.host_value(state.step))
            batches, num_train_pairs = policy_data.train_batches(
                run.data, horizon, k, batch_size, process_rows(batch_sharding, batch_size), int(run.seed), start,
                vocabulary, arrays, arrays, jax.process_index(), jax.process_count())
            logging.info("Diffusion policy data (%s): %d train / %d val pairs; prepared in %.1f s.",
                         "streamed" if run.data.shuffle_buffer else "in memory", num_train_pairs,
                         len(val_arrays["actions"]), time.perf_counter() - t0)
            keys, n_action_steps = observation_keys(run.data), int(run.policy.n_action_steps)
            assets = {artifacts.POLICY_ITEM: diffusion_metadata(dconfig, action_normalizer, obs_normalizers, keys,
                                                                n_action_steps, vocabulary, members)}
        writer = closing.enter_context(loop.metric_writer(workdir))

        def evaluate(params) -> dict[str, float]:  # held-out denoising loss and sampled-chunk MSE
            return summarize_diffusion_eval(
                loop.held_out_sums(eval_step, params, val_arrays, batch_sharding, batch_size))

        # --- the loop: step, log, evaluate, checkpoint; a stop signal checkpoints the current step and returns ---
        step, saved, evaluated, metrics, pending = start, latest, None, {}, []
        rate = loop.StepRate(step)
        with (StopRequest() as stop, Progress(num_steps, start, None if is_main else False) as bar,
              loop.prefetched(batches, start, num_steps, batch_sharding, batch_size) as feed):
            while step < num_steps:
                state, step_metrics = train_step(state, next(feed))  # the next batches are assembled meanwhile
                step += 1
                pending.append((step, step_metrics))
                if loop.itstime(step, run.train.log_every, num_steps):
                    steps_per_sec = rate.rate(step)
                    values = loop.log_train(writer, pending, steps_per_sec, ckpt, run.optim.lr)
                    bar.update(step, loss=values["loss"], steps_per_sec=steps_per_sec)
                    pending = []
                if loop.itstime(step, run.train.eval_every, num_steps):
                    metrics, evaluated = evaluate(state.ema_params), step
                    loop.log_eval(writer, step, metrics)
                    bar.write(_eval_line(step, metrics))
                stopping = step < num_steps and stop.agreed_at(step, run.train.log_every)
                if loop.itstime(step, run.checkpoint.every, num_steps) or stopping:
                    loop.save(ckpt, step, state, run_json, assets, metrics if evaluated == step else None)
                    saved = step
                if stopping:  # the records since the last log line are written too
                    if pending:
                        loop.log_train(writer, pending, rate.rate(step), ckpt, run.optim.lr)
                    return loop.stopped(step, ckpt)
            if evaluated != step:  # a finished run resumed: evaluate again for the export
                metrics = evaluate(state.ema_params)
                loop.log_eval(writer, step, metrics)
                bar.write(_eval_line(step, metrics))
            if saved != step:
                loop.save(ckpt, step, state, run_json, assets, metrics)
            ckpt.wait()

        # --- export: the EMA policy and final_metrics.json ---
        params = jax.tree.map(np.asarray, multihost_utils.process_allgather(state.ema_params, tiled=True))
        if is_main:
            policy = DiffusionPolicy(dconfig, params, action_normalizer, obs_normalizers, keys, n_action_steps,
                                     vocabulary, members)
            policy.save(os.path.join(workdir, artifacts.WORKDIR_POLICY), overwrite=True)
            with open(os.path.join(workdir, artifacts.FINAL_METRICS_FILE), "w", encoding="utf-8") as f:
                json.dump({"step": step, **metrics, "train_pairs": num_train_pairs}, f, indent=1)
        return metrics


def _eval_line(step: int, metrics: dict[str, float]) -> str:
    """'step S: val denoising loss ..., sampled-chunk MSE ...'."""
    line = f"step {step}: val denoising loss {metrics['val_loss']:.4f}"
    if "val_sample_mse" in metrics:
        line += f", sampled-chunk MSE {metrics['val_sample_mse']:.4f} (normalized)"
    return line
