"""`train_and_evaluate(config, workdir)`: trains the autoregressive token policy on a frozen action tokenizer
(config.policy.type = "token"; `diffusion_trainer` trains the Diffusion Policy baseline).

Run with `python -m experiments.train --config=experiments/configs/policy.py:oat --workdir=...` (config.kind =
"policy"). Steps: get the frozen tokenizer (load `config.tokenizer.path`, or fit Bin/FAST on the train chunks) and
keep a copy in `<workdir>/frozen_tokenizer`, fit the state normalizer and collect the instructions on the train
split, read the held-out pairs, then the loop over the train pairs (`policy/data.py`: in memory, tokenized once, or
streamed, tokenized on the device inside the jitted step) with EMA, held-out token loss and Orbax checkpoints with
retention by validation loss, and write the EMA policy to `<workdir>/policy` (`TokenPolicy.load(workdir)`).

Each checkpoint holds the `policy` item (policy.json's content: config, sampling, observation normalizer, keys) and
the `frozen_tokenizer` item (the copy's directory), so a step loads with `TokenPolicy.load(workdir, step=...)` and a
resumed run does not need the tokenizer's original location.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time

import jax
import ml_collections
from jax.experimental import multihost_utils
import numpy as np

from oat_jax import artifacts
from oat_jax.action_tokenizers import fit_action_tokenizer, load_action_tokenizer
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel
from oat_jax.policy.policy import TokenPolicy, policy_metadata
from oat_jax.training import data, loop, run_config
from oat_jax.training.policy import data as policy_data
from oat_jax.training.faults import StopRequest
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy.step import (init_policy_state, make_policy_eval_step, make_policy_train_step,
                                          summarize_eval)
from oat_jax.training.policy.data import check_action_steps, check_data_config, observation_keys
from oat_jax.training.progress import Progress
from oat_jax.training.sharding import process_rows


def frozen_tokenizer(source: run_config.TokenizerSource, train_chunks: np.ndarray | None):
    """The tokenizer named by `config.tokenizer`: loaded from `path`, or fitted (Bin / FAST) on `train_chunks`."""
    if source.path:
        return load_action_tokenizer(os.path.expanduser(source.path))
    if source.fit:
        return fit_action_tokenizer(source.fit, train_chunks, **dict(source.fit_options))
    raise ValueError("Set config.tokenizer.path (a saved tokenizer directory or an OAT training workdir) or "
                     "config.tokenizer.fit ('bin' | 'fast') to choose the policy's action tokenizer.")


def policy_config(run: run_config.PolicyRun, tokenizer, arrays: dict, num_instructions: int) -> PolicyConfig:
    """The PolicyConfig of a run: the tokenizer's vocabulary and length, the observation shapes of `arrays` (pairs
    as `policy_data.observation_fields` reads them), `num_instructions`, the sizes of `config.model`."""
    m = run.model
    return PolicyConfig(vocab_size=int(tokenizer.vocab_size), max_tokens=int(tokenizer.max_tokens),
                        variable_length=not tokenizer.fixed_length, **policy_data.observation_fields(arrays),
                        num_instructions=num_instructions, n_obs_steps=int(run.data.n_obs_steps), width=m.width,
                        depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                        state_hidden=m.state_hidden, dtype=m.dtype)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains a token policy following `config` (experiments/configs/policy.py) in `workdir`, resuming from its
    latest checkpoint; the loop reads top to bottom. Returns the final held-out metrics ({} when stopped by a
    signal: the current step is checkpointed and the same command resumes).

    Workdir: checkpoints/, frozen_tokenizer/, policy/ (the EMA policy, `TokenPolicy.load(workdir)`), metrics.jsonl,
    tb/, final_metrics.json (metrics and the target token statistics).
    """
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
            ckpt = closing.enter_context(loop.checkpoint_store(run, workdir, artifacts.POLICY_RUN_ITEMS,
                                                               artifacts.BEST_METRIC["policy"]))
            latest, t0 = ckpt.latest_step(), time.perf_counter()
            loop.check_run_kind(ckpt, latest, "policy", workdir)
            tokenizer, saved_policy = _frozen_tokenizer(run, run_json, workdir, ckpt, latest, is_main)
            horizon, k = int(tokenizer.horizon), int(run.data.n_obs_steps)
            check_action_steps(run, horizon, "the tokenizer's horizon")
            labels = policy_data.member_labels(run.data)
            if saved_policy is None:  # fitted on the train split; a resumed run keeps the saved ones
                vocabulary = tuple(policy_data.instructions(run.data))
                normalizers, _ = policy_data.fit_normalizers(run.data, run.obs_normalizer.mode)
            else:
                vocabulary = tuple(saved_policy.get("instructions", ()))
                normalizers = policy_data.saved_normalizers(saved_policy, labels, "state")
            obs_normalizers = {} if normalizers is None else {"state": normalizers[0]}  # the first member's
            members = policy_data.member_normalizers(labels, normalizers)
            on_host, streamed, targets, frozen = policy_data.token_feeds(tokenizer, normalizers, labels)
            val_arrays = on_host(policy_data.eval_pairs(run.data, horizon, k, vocabulary))
            pconfig = policy_config(run, tokenizer, val_arrays, len(vocabulary))
            sampling = run.sampling

            model = TokenPolicyModel(pconfig)
            tx, schedule = make_optimizer(run.optim, num_steps)
            state, state_sharding = loop.init_or_restore(lambda: init_policy_state(model, tx, int(run.seed)),
                                                         mesh, run.sharding, ckpt, latest)
            if latest is not None:
                logging.info("Resumed the policy from step %d.", latest)
            start = int(loop.host_value(state.step))
            batches, num_train_pairs = policy_data.train_batches(
                run.data, horizon, k, batch_size, process_rows(batch_sharding, batch_size), int(run.seed), start,
                vocabulary, streamed, on_host, jax.process_index(), jax.process_count())
            in_memory = isinstance(batches, policy_data.PairBatches)
            stats_of = batches.arrays if in_memory else val_arrays  # streamed: the held-out pairs' targets
            token_stats = policy_data.token_statistics(stats_of["tokens"], stats_of["lengths"], tokenizer.vocab_size)
            logging.info("Policy data (%s): %d train / %d val pairs, tokenizer %s (%s), targets %s; prepared in "
                         "%.1f s.", "in memory" if in_memory else "streamed", num_train_pairs,
                         len(val_arrays["tokens"]), tokenizer.name, pconfig.max_tokens,
                         {k_: round(v, 3) for k_, v in token_stats.items()}, time.perf_counter() - t0)
            device_targets = not in_memory and targets is not None
            train_step = loop.jit_train_step(make_policy_train_step(model, tx, schedule, run.ema, targets),
                                             state_sharding, batch_sharding, frozen if device_targets else None)
            eval_step = loop.jit_eval_step(make_policy_eval_step(model), state_sharding.ema_params, batch_sharding)
            keys, n_action_steps = observation_keys(run.data), int(run.policy.n_action_steps)
            assets = {artifacts.POLICY_ITEM: policy_metadata(pconfig, sampling, obs_normalizers, keys,
                                                             n_action_steps, tokenizer.name, vocabulary, members),
                      artifacts.FROZEN_TOKENIZER_ITEM: {
                          "name": tokenizer.name, "dir": artifacts.WORKDIR_FROZEN_TOKENIZER,
                          "sha256": artifacts.tokenizer_fingerprint(
                              os.path.join(workdir, artifacts.WORKDIR_FROZEN_TOKENIZER))}}
        writer = closing.enter_context(loop.metric_writer(workdir))

        def evaluate(params) -> dict[str, float]:  # held-out token loss and accuracies
            return summarize_eval(loop.held_out_sums(eval_step, params, val_arrays, batch_sharding, batch_size))

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
                    bar.update(step, loss=values["loss"], acc=values["token_acc"], steps_per_sec=steps_per_sec)
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

        # --- export: the EMA policy and final_metrics.json (with the target token statistics) ---
        params = jax.tree.map(np.asarray, multihost_utils.process_allgather(state.ema_params, tiled=True))
        if is_main:
            policy = TokenPolicy(pconfig, params, tokenizer, obs_normalizers, sampling, keys, n_action_steps,
                                 vocabulary, members)
            policy.save(os.path.join(workdir, artifacts.WORKDIR_POLICY), overwrite=True)
            with open(os.path.join(workdir, artifacts.FINAL_METRICS_FILE), "w", encoding="utf-8") as f:
                json.dump({"step": step, **metrics, "token_stats": token_stats,
                           "token_stats_split": "train" if in_memory else "val", "train_pairs": num_train_pairs},
                          f, indent=1)
        return metrics


def _frozen_tokenizer(run: run_config.PolicyRun, run_json: dict, workdir: str, ckpt, latest: int | None,
                      is_main: bool):
    """(tokenizer, the saved policy item (None: a fresh run)): a resumed run's copy in the workdir; else
    run.tokenizer's (loaded, or fitted on the train chunks), copied to `<workdir>/frozen_tokenizer` so checkpoints
    do not depend on its original location."""
    if latest is not None:
        saved = ckpt.restore_json(latest)
        loop.warn_if_config_changed(saved[artifacts.RUN_CONFIG_ITEM], run_json, workdir)
        started_with = (saved[artifacts.RUN_CONFIG_ITEM].get("tokenizer") or {}).get("path", "")
        if os.path.normpath(os.path.expanduser(started_with or ".")) != os.path.normpath(
                os.path.expanduser(run.tokenizer.path or ".")):
            raise ValueError(f"config.tokenizer.path={run.tokenizer.path!r}, but the run in {workdir} was started "
                             f"with {started_with!r} and trains on that tokenizer's copy: resume with the same "
                             f"--config.tokenizer.path, or use a new --workdir for another tokenizer.")
        saved_policy, copy = artifacts.policy_run_assets(workdir, latest)
        return load_action_tokenizer(copy), saved_policy
    chunks = None
    if run.tokenizer.fit and not run.tokenizer.path:  # the train chunks only (no observations), every member's
        chunks = np.concatenate([data.load_chunks(m.spec, run.data, "train", int(run.data.horizon))
                                 for m in data.dataset_members(run.data)])
    tokenizer = frozen_tokenizer(run.tokenizer, chunks)
    if is_main:  # no checkpoint refers to a copy yet: replace a stale one of an earlier start
        copy = os.path.join(workdir, artifacts.WORKDIR_FROZEN_TOKENIZER)
        shutil.rmtree(copy, ignore_errors=True)
        tokenizer.save(copy)
    if jax.process_count() > 1:  # the other processes hash the copy for their checkpoint assets
        multihost_utils.sync_global_devices("oat_frozen_tokenizer_copied")
    return tokenizer, None


def _eval_line(step: int, metrics: dict[str, float]) -> str:
    """'step S: val loss ..., token acc ..., first-token acc ...'."""
    return (f"step {step}: val loss {metrics['val_loss']:.4f}, token acc {metrics['val_token_acc']:.3f}, "
            f"first-token acc {metrics['val_acc_first']:.3f}")
