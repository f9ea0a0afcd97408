"""`train_policy(config, workdir)`: trains the autoregressive token policy on a frozen action tokenizer.

Run with `python -m experiments.train --config=experiments/configs/policy.py:oat --workdir=...` (config.kind =
"policy"). Steps: get the frozen tokenizer (load `config.tokenizer.path`, or fit Bin/FAST on the train chunks),
load (observation history, chunk) pairs into memory, fit the observation normalizer on the train split, tokenize
every chunk once, then the usual loop (jitted step over the device mesh, EMA, held-out token loss, Orbax
checkpoints with retention by validation loss) and export the EMA policy to `<workdir>/policy` (`TokenPolicy`).

Self-contained checkpoints: each checkpoint's JSON item `dataset_stats` (the tokenizer trainer's item layout,
`CheckpointStore`) holds {"policy_config", "obs_normalizers", "token_stats", "tokenizer_name", "tokenizer_archive"}
where the archive is the frozen tokenizer's saved directory as a base64 tar.gz. A resumed run restores the
tokenizer from there, so the tokenizer's original workdir may be moved or deleted after the first checkpoint.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import tarfile
import tempfile
import time

import jax
import ml_collections
import numpy as np

from oat_jax.normalizer import ActionNormalizer
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel
from oat_jax.policy.policy import WORKDIR_SUBDIR, TokenPolicy
from oat_jax.policy.sampling import SamplingConfig
from oat_jax.policy.tokenizer_io import load_tokenizer
from oat_jax.training import policy_data
from oat_jax.training.checkpointing import CheckpointStore, abstract_like
from oat_jax.training.data import padded_batches
from oat_jax.training.export import CHECKPOINT_DIR
from oat_jax.training.faults import NonFiniteLossError, close_quietly_on_error
from oat_jax.training.loop import config_json, run_steps
from oat_jax.training.metrics import MetricWriter
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy_step import (init_policy_state, make_policy_eval_step, make_policy_train_step,
                                          summarize_eval)
from oat_jax.training.progress import Progress
from oat_jax.training.sharding import (batch_sharding, check_batch_divisible, make_mesh, process_rows, replicated,
                                       to_global, tree_shardings)
from oat_jax.training.trainer import host_value

BEST_METRIC = "val_loss"


# ----- the frozen tokenizer, carried inside checkpoints -----
def archive_directory(path: str) -> str:
    """A directory as base64 text of a tar.gz (paths relative to it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname=".")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def extract_archive(text: str, path: str) -> str:
    """Inverse of `archive_directory`: writes the files under `path`; returns it."""
    os.makedirs(path, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(text)), mode="r:gz") as tar:
        tar.extractall(path, filter="data")
    return path


def tokenizer_from_archive(text: str):
    """Loads the tokenizer stored by `archive_directory` (through a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_tokenizer(extract_archive(text, os.path.join(tmp, "tokenizer")))


def frozen_tokenizer(tok_cfg: ml_collections.ConfigDict, train_chunks: np.ndarray):
    """The tokenizer named by `config.tokenizer`: loaded from `path`, or fitted (Bin / FAST) on `train_chunks`."""
    if tok_cfg.path:
        return load_tokenizer(os.path.expanduser(tok_cfg.path))
    if tok_cfg.fit:
        try:
            from oat_jax.action_tokenizers import registry
        except ImportError as e:
            raise ValueError("config.tokenizer.fit needs oat_jax.action_tokenizers.registry (Bin / FAST), which is "
                             "not installed in this tree; set config.tokenizer.path instead.") from e
        options = dict(tok_cfg.fit_options.to_dict()) if tok_cfg.get("fit_options") else {}
        return registry.fit_action_tokenizer(tok_cfg.fit, train_chunks, **options)
    raise ValueError("Set config.tokenizer.path (a saved tokenizer directory or an OAT training workdir) or "
                     "config.tokenizer.fit ('bin' | 'fast') to choose the policy's action tokenizer.")


def _policy_config(config: ml_collections.ConfigDict, tokenizer, obs_dim: int) -> PolicyConfig:
    m = config.model
    return PolicyConfig(vocab_size=int(tokenizer.vocab_size), max_tokens=int(tokenizer.max_tokens),
                        variable_length=not tokenizer.fixed_length, obs_dim=obs_dim,
                        n_obs_steps=int(config.data.n_obs_steps), width=m.width, depth=m.depth,
                        num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout, state_hidden=m.state_hidden,
                        dtype=m.dtype)


def _arrays(pairs: dict, tokenizer, normalizer: ActionNormalizer) -> dict:
    """Pairs {"actions", "state"} -> {"tokens" (M, max_tokens), "lengths" (M,), "state" normalized (M, K, obs)}."""
    tokens, lengths = policy_data.tokenize_all(tokenizer, pairs["actions"])
    return {"tokens": tokens, "lengths": lengths, "state": normalizer.normalize(pairs["state"])}


def train_policy(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains a token policy following `config` (experiments/configs/policy.py) in `workdir`, resuming from its
    latest checkpoint. Returns the final held-out metrics ({} when stopped by a signal).

    Workdir: checkpoints/, policy/ (the exported EMA policy, `TokenPolicy.load(workdir)`), metrics.jsonl, tb/,
    final_metrics.json (metrics + target token statistics).
    """
    if config.data.n_obs_steps < 1:
        raise ValueError(f"config.data.n_obs_steps must be >= 1, got {config.data.n_obs_steps}.")
    if tuple(config.data.obs_keys) != ("observation/state",) and [k.split("/")[-1] for k in config.data.obs_keys] \
            != ["state"]:
        raise ValueError(f"config.data.obs_keys={tuple(config.data.obs_keys)}: the trainer feeds state vectors; "
                         f"give one key whose last component is 'state' (e.g. 'observation/state').")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = make_mesh(config.mesh)
    batch_size = int(config.train.batch_size)
    check_batch_divisible(batch_size, mesh)
    check_batch_divisible(int(config.train.eval_batch_size), mesh)
    b_sharding = batch_sharding(mesh)
    ckpt = CheckpointStore(os.path.join(workdir, CHECKPOINT_DIR), config.checkpoint.keep_last,
                           config.checkpoint.keep_best, BEST_METRIC, config.checkpoint.async_save)
    spec = policy_data.policy_spec(config.data)
    latest = ckpt.latest_step()
    meta = None
    if latest is not None:
        saved_config, meta = ckpt.restore_json(latest)
        tokenizer = tokenizer_from_archive(meta["tokenizer_archive"])
        if saved_config != config_json(config):
            logging.warning("Resuming from %s with a config that differs from the checkpoint's; using the new one.",
                            workdir)
    t0 = time.perf_counter()
    k = int(config.data.n_obs_steps)
    train_pairs = None
    if meta is None and config.tokenizer.fit and not config.tokenizer.path:
        train_pairs = policy_data.load_pairs(spec, config.data, "train", int(config.data.horizon), k)
        tokenizer = frozen_tokenizer(config.tokenizer, train_pairs["actions"])
    elif meta is None:
        tokenizer = frozen_tokenizer(config.tokenizer, None)
    horizon = int(tokenizer.horizon)
    if not 1 <= int(config.policy.n_action_steps) <= horizon:
        raise ValueError(f"config.policy.n_action_steps={config.policy.n_action_steps} must be in 1..{horizon} (the "
                         f"tokenizer's horizon).")
    if train_pairs is None:
        train_pairs = policy_data.load_pairs(spec, config.data, "train", horizon, k)
    val_pairs = policy_data.load_pairs(spec, config.data, "val", horizon, k)
    if meta is None:
        normalizer = ActionNormalizer.fit(train_pairs["state"], config.obs_normalizer.mode)
        with tempfile.TemporaryDirectory() as tmp:
            saved = os.path.join(tmp, "tokenizer")
            tokenizer.save(saved)
            archive = archive_directory(saved)
        meta = {"tokenizer_name": tokenizer.name, "tokenizer_archive": archive,
                "obs_normalizers": {"state": normalizer.to_dict()}}
    normalizer = ActionNormalizer.from_dict(meta["obs_normalizers"]["state"])
    train_arrays = _arrays(train_pairs, tokenizer, normalizer)
    token_stats = policy_data.token_statistics(train_arrays["tokens"], train_arrays["lengths"], tokenizer.vocab_size)
    limit = int(config.data.max_eval_chunks)
    if 0 < limit < len(val_pairs["actions"]):
        keep = np.linspace(0, len(val_pairs["actions"]) - 1, limit).round().astype(np.int64)
        val_pairs = {name: v[keep] for name, v in val_pairs.items()}
    val_arrays = _arrays(val_pairs, tokenizer, normalizer)
    pconfig = _policy_config(config, tokenizer, int(train_pairs["state"].shape[-1]))
    meta.update(policy_config=pconfig.to_dict(), token_stats=token_stats)
    logging.info("Policy data: %d train / %d val pairs, tokenizer %s (%s), targets %s; prepared in %.1f s.",
                 len(train_arrays["tokens"]), len(val_arrays["tokens"]), tokenizer.name, pconfig.max_tokens,
                 {k_: round(v, 3) for k_, v in token_stats.items()}, time.perf_counter() - t0)

    model = TokenPolicyModel(pconfig)
    num_steps = int(config.train.num_steps)
    tx, schedule = make_optimizer(config.optim, num_steps)
    init_fn = lambda: init_policy_state(model, tx, int(config.seed))  # noqa: E731
    abstract = jax.eval_shape(init_fn)
    state_sharding = tree_shardings(abstract, mesh, config.sharding)
    if latest is None:
        state = jax.jit(init_fn, out_shardings=state_sharding)()
    else:
        state, _, _ = ckpt.restore(latest, abstract_like(abstract, state_sharding))
        logging.info("Resumed the policy from step %d.", latest)
    train_step_fn = jax.jit(make_policy_train_step(model, tx, schedule, config.ema),
                         in_shardings=(state_sharding, b_sharding), out_shardings=(state_sharding, replicated(mesh)),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_policy_eval_step(model), in_shardings=(state_sharding.ema_params, b_sharding),
                        out_shardings=replicated(mesh))
    batches = policy_data.PairBatches(train_arrays, batch_size, process_rows(b_sharding, batch_size),
                                      int(config.seed))
    writer = MetricWriter(workdir, enabled=is_main)

    def evaluate(params) -> dict[str, float]:
        eb = int(config.train.eval_batch_size)
        rows = process_rows(b_sharding, eb)
        index = np.arange(len(val_arrays["tokens"]))
        total = None
        for idx, weights in padded_batches(index, eb):
            local = {name: v[idx[rows]] for name, v in val_arrays.items()}
            local["weights"] = weights[rows]
            sums = eval_step(params, to_global(local, b_sharding, eb))
            total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
        return summarize_eval(jax.tree.map(host_value, total))

    def train_step(i: int) -> dict:
        nonlocal state
        state, step_metrics = train_step_fn(state, to_global(batches.local_batch(i), b_sharding, batch_size))
        return step_metrics

    def log_train(pending: list, rate: float, bar: Progress) -> None:
        for s, m in pending:
            values = {k_: float(host_value(v)) for k_, v in m.items()}
            if not np.isfinite(values["loss"]):
                raise NonFiniteLossError(f"Policy loss is {values['loss']} at step {s}; lower "
                                         f"config.optim.lr (now {config.optim.lr}).")
            writer.write_scalars(s, {f"train/{k_}": v for k_, v in values.items()})
        writer.write_scalars(s, {"train/steps_per_sec": rate})
        bar.update(s, loss=values["loss"], acc=values["token_acc"], steps_per_sec=rate)

    def evaluate_and_log(step: int, bar: Progress) -> dict[str, float]:
        metrics = evaluate(state.ema_params)
        writer.write_scalars(step, {f"eval/{k_}": v for k_, v in metrics.items()})
        bar.write(f"step {step}: val loss {metrics['val_loss']:.4f}, token acc "
                  f"{metrics['val_token_acc']:.3f}, first-token acc {metrics['val_acc_first']:.3f}")
        return metrics

    def save(at: int, metrics: dict[str, float] | None) -> None:
        scored = None if metrics is None else {BEST_METRIC: metrics[BEST_METRIC]}
        ckpt.save(at, state, config_json(config), meta, scored)

    try:
        metrics = run_steps(config, int(host_value(state.step)), num_steps, latest, train_step=train_step,
                            log_train=log_train, evaluate_and_log=evaluate_and_log, save=save, wait=ckpt.wait,
                            show_progress=is_main and config.train.progress_bar)
        if metrics is None:
            return {}
        if is_main:
            params = jax.tree.map(np.asarray, jax.device_get(state.ema_params))
            sampling = SamplingConfig(float(config.sampling.temperature), int(config.sampling.top_k))
            policy = TokenPolicy(pconfig, params, tokenizer, {"state": normalizer}, sampling,
                                 {"state": config.data.obs_keys[0]}, int(config.policy.n_action_steps))
            policy.save(os.path.join(workdir, WORKDIR_SUBDIR), overwrite=True)
            with open(os.path.join(workdir, "final_metrics.json"), "w", encoding="utf-8") as f:
                json.dump({"step": int(host_value(state.step)), **metrics, "token_stats": token_stats,
                           "train_pairs": len(train_arrays["tokens"])}, f, indent=1)
        return metrics
    finally:
        close_quietly_on_error(ckpt.close, "checkpoint manager")
        close_quietly_on_error(writer.close, "metric writer")
