"""`train_and_evaluate(config, workdir)`: the OAT tokenizer training loop.

One process per host; every process runs this same function (SPMD). The loop: restore or initialise the sharded
train state, then for each step assemble the global batch from per-process rows, run the jitted train step,
log, evaluate the EMA params on held-out episodes, checkpoint; at the end export the EMA tokenizer to
`workdir/tokenizer` (loadable with `OATTokenizer.load(workdir)`) and draw the plots.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from oat_jax.decoder import keep_length_distribution
from oat_jax.model import OATModel
from oat_jax.normalizer import ActionNormalizer
from oat_jax.tokenizer import OATTokenizer
from oat_jax.training import data, evaluation, plots
from oat_jax.training.checkpointing import CheckpointStore, abstract_like
from oat_jax.training.export import CHECKPOINT_DIR, TOKENIZER_DIR, export_in_subprocess, save_tokenizer
from oat_jax.training.faults import NonFiniteLossError, close_quietly_on_error, mark_setup_error, tree_all_finite
from oat_jax.training.loop import config_json, run_steps
from oat_jax.training.metrics import MetricWriter
from oat_jax.training.optim import make_optimizer
from oat_jax.training.progress import Progress
from oat_jax.training.sharding import (batch_sharding, check_batch_divisible, make_mesh, maybe_initialize_distributed,
                                       process_rows, replicated, to_global, tree_shardings)
from oat_jax.training.train_step import init_train_state, make_train_step, model_config


def host_value(x: jax.Array) -> np.ndarray:
    """numpy copy of a replicated (possibly multi-process) jax.Array."""
    return np.asarray(x.addressable_data(0)) if not x.is_fully_addressable else np.asarray(x)


class _Run:
    """The pieces of one run that several phases share (mesh, shardings, jitted functions, data, writers)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        self.is_main = jax.process_index() == 0
        self.mesh = make_mesh(config.mesh)
        self.batch_size = int(config.train.batch_size)
        check_batch_divisible(self.batch_size, self.mesh, int(config.optim.accum_steps))
        check_batch_divisible(int(config.train.eval_batch_size), self.mesh)
        self.batch_sharding = batch_sharding(self.mesh)
        # config errors before anything is created in the workdir
        self.members = data.dataset_members(config.data)
        self.spec = self.members[0].spec
        self.is_mixture = len(self.members) > 1
        self.ckpt = CheckpointStore(os.path.join(workdir, CHECKPOINT_DIR), config.checkpoint.keep_last,
                                    config.checkpoint.keep_best, "val_mse", config.checkpoint.async_save)
        try:
            self._build(config, workdir)
        except BaseException:  # release Orbax's threads, so the error is the last thing printed
            close_quietly_on_error(self.ckpt.close, "checkpoint manager")
            raise

    def _build(self, config: ml_collections.ConfigDict, workdir: str) -> None:
        """The rest of __init__: statistics, model, (restored) state, jitted steps, data, writer."""
        latest = self.ckpt.latest_step()
        self.restored_step = latest  # step of the checkpoint this run started from (None: a fresh run)
        if latest is None:
            self.stats = data.member_statistics(self.members, config.data)
        else:  # the normalizer must stay the one the checkpoint was trained with
            saved_config, self.stats = self.ckpt.restore_json(latest)
            if saved_config != config_json(config):
                logging.warning("Resuming from %s: the config differs from the one saved in the checkpoint; "
                                "the new one is used.", workdir)
        saved_members = list(self.stats.get("datasets", {}))
        members = [m.label for m in self.members] if self.is_mixture else []
        if saved_members != members:
            started = f"the mixture {saved_members}" if saved_members else "one dataset"
            raise ValueError(f"The run in {workdir} was started on {started}; the config names "
                             f"{f'the mixture {members}' if members else 'one dataset'}. Resume with the training "
                             f"data it started with (config.data.mixture / path / name), or use a new --workdir.")
        raw_dims = [int(d) for d in str(config.normalizer.get("unnormalized_dims", "")).split(",") if d.strip()]
        if raw_dims:  # recorded in the statistics, so checkpoints and load_pretrained rebuild the same normalizer
            dim = len(self.stats["action"]["min"])
            if any(not 0 <= d < dim for d in raw_dims):
                raise ValueError(f"config.normalizer.unnormalized_dims={raw_dims} is out of range for {dim}-D actions.")
            mask = [d not in raw_dims for d in range(dim)]
            self.stats = _with_mask(self.stats, mask)
        self.normalizer = ActionNormalizer.from_stats(self.stats["action"], config.normalizer.mode)
        # a mixture: each member normalized with its own statistics, on the host (the train step sees normalized
        # chunks and an identity normalizer); one dataset: the train step normalizes
        self.normalizers = ({self.members[0].label: self.normalizer} if not self.is_mixture else
                            data.member_normalizers(self.stats, self.members, config.normalizer.mode))
        self.model_config = model_config(config.model, self.normalizer.action_dim)
        self.model = OATModel(self.model_config)
        self.num_steps = int(config.train.num_steps)
        self.tx, self.schedule = make_optimizer(config.optim, self.num_steps)
        init_fn = functools.partial(init_train_state, self.model, self.tx, int(config.seed))
        abstract = jax.eval_shape(init_fn)
        self.state_sharding = tree_shardings(abstract, self.mesh, config.sharding)
        if latest is None:
            self.state = jax.jit(init_fn, out_shardings=self.state_sharding)()
        else:
            try:
                self.state, _, _ = self.ckpt.restore(latest, abstract_like(abstract, self.state_sharding))
            except (ValueError, TypeError, KeyError) as e:
                changed = config_changes(saved_config, config_json(config))
                raise ValueError(
                    f"Cannot resume from the checkpoint of step {latest} in {self.ckpt.manager.directory}: it does not "
                    f"fit the current config" + (f" (changed since it was saved: {changed})" if changed else "") +
                    f". Resume with the saved values, or start a new run with another --workdir. "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
            logging.info("Resumed from the checkpoint of step %d in %s.", latest, self.ckpt.manager.directory)
        self.train_step = jax.jit(
            make_train_step(self.model, self.tx, self.schedule,
                            ActionNormalizer.identity(self.normalizer.action_dim) if self.is_mixture
                            else self.normalizer, config.ema,
                            int(config.optim.accum_steps), self.mesh, loss_cfg=config.get("loss"),
                            augment_cfg=config.get("augment"), num_steps=self.num_steps),
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, replicated(self.mesh)), donate_argnums=(0,))
        self.eval_steps = {label: jax.jit(evaluation.make_eval_step(self.model, normalizer),
                                          in_shardings=(self.state_sharding.ema_params, self.batch_sharding,
                                                        self.batch_sharding),
                                          out_shardings=replicated(self.mesh))
                           for label, normalizer in self.normalizers.items()}
        self.eval_step = self.eval_steps[self.members[0].label]  # the default normalizer's
        horizon = self.model_config.horizon
        rows, start = process_rows(self.batch_sharding, self.batch_size), int(host_value(self.state.step))
        if self.is_mixture:
            self.train_batches = data.make_mixture_batches(self.members, list(self.normalizers.values()),
                                                           config.data, horizon, self.batch_size, rows,
                                                           int(config.seed), start)
        else:
            self.train_batches = data.make_train_batches(self.spec, config.data, horizon, self.batch_size, rows,
                                                         int(config.seed), start)
        # {label: validation chunks} per member, raw units; the first member's also serve the plots
        self.member_eval_chunks = {m.label: data.eval_chunks(m.spec, config.data, horizon) for m in self.members}
        self.eval_chunks = self.member_eval_chunks[self.members[0].label]
        self.extra_eval_chunks = data.extra_eval_chunks(config.data, horizon)  # {label: chunks}, e.g. unseen tasks
        for label, chunks in self.extra_eval_chunks.items():
            if chunks.shape[-1] != self.model_config.action_dim:
                raise ValueError(f"config.data.eval_datasets: {label!r} has {chunks.shape[-1]}-D actions but the "
                                 f"tokenizer is trained on {self.model_config.action_dim}-D actions; evaluate on "
                                 f"datasets of the same action layout.")
        clash = sorted(set(self.extra_eval_chunks) & set(self.normalizers)) if self.is_mixture else []
        if clash:
            raise ValueError(f"config.data.eval_datasets: the label(s) {clash} also name mixture members; name the "
                             f"entries as label=DIR.")
        self.writer = MetricWriter(workdir, enabled=self.is_main)

    def _eval_sums(self, params: Any, chunks: np.ndarray, eval_step=None) -> dict:
        batch = int(self.config.train.eval_batch_size)
        rows = process_rows(self.batch_sharding, batch)
        eval_step = eval_step or self.eval_step
        total = None
        for chunk, weights in data.padded_batches(chunks, batch):
            local = {"actions": chunk[rows], "weights": weights[rows]}
            g = to_global(local, self.batch_sharding, batch)
            sums = eval_step(params, g["actions"], g["weights"])
            total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
        return jax.tree.map(host_value, total)

    def evaluate(self, params: Any) -> dict[str, float]:
        """Held-out metrics of `params`: `evaluation.summarize` over the validation chunks, plus
        `<label>/mse_norm/k{k}` and `<label>/mse_raw/k{k}` for each dataset of config.data.eval_datasets (in the
        default normalizer's units) and, for a mixture, for each member (its own units). A mixture's overall
        metrics pool the members' validation chunks (each normalized with its own statistics; `mse_raw` then adds
        squared errors of different datasets' units)."""
        if not self.is_mixture:
            metrics = evaluation.summarize(self._eval_sums(params, self.eval_chunks))
        else:
            member_sums = {label: self._eval_sums(params, self.member_eval_chunks[label], self.eval_steps[label])
                           for label in self.normalizers}
            metrics = evaluation.summarize(jax.tree.map(lambda *xs: sum(xs), *member_sums.values()))
            for label, sums in member_sums.items():
                metrics.update({f"{label}/{k}": v for k, v in evaluation.summarize(sums).items()
                                if k.startswith("mse_")})
        for label, chunks in self.extra_eval_chunks.items():
            extra = evaluation.summarize(self._eval_sums(params, chunks))
            metrics.update({f"{label}/{k}": v for k, v in extra.items() if k.startswith("mse_")})
        return metrics

    def log_train(self, pending: list[tuple[int, dict]], rate: float, bar: Progress) -> None:
        """Writes the train metrics of the steps in `pending`; raises NonFiniteLossError on a NaN/Inf loss."""
        logged = [(s, {k: float(host_value(v)) for k, v in m.items()}) for s, m in pending]
        for s, values in logged:
            self.writer.write_scalars(s, {f"train/{k}": v for k, v in values.items()})
        for s, values in logged:
            if not np.isfinite(values["loss"]):
                self.writer.flush()
                raise NonFiniteLossError(
                    f"Training loss is {values['loss']} at step {s}: stopping without writing a checkpoint of the "
                    f"diverged state. The last good checkpoint is step {self.ckpt.latest_step()}; lower "
                    f"config.optim.lr (now {self.config.optim.lr}) or check the data.")
        step = logged[-1][0]
        self.writer.write_scalars(step, {"train/steps_per_sec": rate})
        bar.update(step, loss=logged[-1][1]["loss"], steps_per_sec=rate)

    def evaluate_and_log(self, step: int, bar: Progress) -> dict[str, float]:
        """Evaluates the EMA params, logs the metrics at `step` and returns them; raises NonFiniteLossError when a
        held-out MSE is NaN/Inf (such a step is never checkpointed, so never 'best')."""
        metrics = self.evaluate(self.state.ema_params)
        self.writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        bad = sorted(k for k, v in metrics.items() if "mse" in k and not np.isfinite(v))
        if bad:
            self.writer.flush()
            raise NonFiniteLossError(f"Held-out metrics {bad[:4]} are NaN/Inf at step {step}: stopping without a "
                                     f"checkpoint of this step. Check the evaluation data (config.data.path / "
                                     f"config.data.eval_datasets) for non-finite actions.")
        n = self.model_config.num_tokens
        extra = "".join(f"; {label} k=1 {metrics[f'{label}/mse_norm/k1']:.4f}, k={n} "
                        f"{metrics[f'{label}/mse_norm/k{n}']:.4f}" for label in self.curve_labels())
        bar.write(f"step {step}: held-out MSE k=1 {metrics['mse_norm/k1']:.4f}, k={n} {metrics['val_mse']:.4f}"
                  f"{extra}")
        return metrics

    def save(self, step: int, metrics: dict[str, float] | None) -> None:
        """Checkpoints the current state at `step` unless it holds non-finite values (then raises)."""
        if not bool(host_value(tree_all_finite((self.state.params, self.state.ema_params)))):
            raise NonFiniteLossError(f"Params are NaN/Inf at step {step}: not writing a checkpoint. The last good "
                                     f"checkpoint is step {self.ckpt.latest_step()}; lower config.optim.lr or check "
                                     f"the data.")
        self.ckpt.save(step, self.state, config_json(self.config), self.stats,
                       None if metrics is None else {"val_mse": float(metrics["val_mse"])})

    def export(self, metrics: dict[str, float]) -> str:
        """Writes the EMA tokenizer, the plots and `final_metrics.json`; returns the tokenizer directory."""
        path = os.path.join(self.workdir, TOKENIZER_DIR)
        step = int(host_value(self.state.step))
        params = jax.tree.map(np.asarray, multihost_utils.process_allgather(self.state.ema_params, tiled=True))
        if jax.process_count() == 1:
            save_tokenizer(path, self.model_config, params, self.normalizer,
                           self.normalizers if self.is_mixture else None)
        else:  # saving is a one-process job: process 0 exports the final checkpoint in a subprocess
            multihost_utils.sync_global_devices("oat_export_start")
            if self.is_main:
                export_in_subprocess(self.workdir, step)
            multihost_utils.sync_global_devices("oat_export_done")
        if self.is_main:
            with open(os.path.join(self.workdir, "final_metrics.json"), "w", encoding="utf-8") as f:
                json.dump({"step": step, **metrics}, f, indent=1)
            self.plot(OATTokenizer(self.model_config, params, self.normalizer), metrics)
        return path

    def curve_labels(self) -> list[str]:
        """Labels with their own per-k metrics: a mixture's members, then config.data.eval_datasets."""
        return ([m.label for m in self.members] if self.is_mixture else []) + list(self.extra_eval_chunks)

    def plot(self, tok: OATTokenizer, metrics: dict[str, float]) -> None:
        """rate_distortion.png and reconstructions.png (a few evenly spaced validation chunks) in the workdir."""
        c = self.model_config
        curves = {"held-out episodes": evaluation.mse_curves(metrics, c.num_tokens)}
        curves.update({label: evaluation.mse_curves(metrics, c.num_tokens, prefix=f"{label}/")
                       for label in self.curve_labels()})
        trained_ks, _ = keep_length_distribution(c.num_tokens, c.nested_dropout, c.nested_dropout_power,
                                                 c.nested_dropout_full)
        plots.plot_rate_distortion(curves, os.path.join(self.workdir, "rate_distortion.png"), trained_ks)
        num = int(self.config.plots.num_chunks)
        chunks = self.eval_chunks[np.linspace(0, len(self.eval_chunks) - 1, num).round().astype(np.int64)]
        tokens = tok.tokenize(chunks)
        ks = [k for k in self.config.plots.prefix_lengths if k <= self.model_config.num_tokens]
        decodes = {k: np.asarray(tok.detokenize(tokens, lengths=k)) for k in ks}
        plots.plot_reconstructions(chunks, decodes, os.path.join(self.workdir, "reconstructions.png"))


def _with_mask(stats: dict, mask: list[bool]) -> dict:
    """Statistics with the normalization mask recorded in the action entry (and each mixture member's)."""
    out = {**stats, "action": {**stats["action"], "mask": mask}}
    if "datasets" in stats:
        out["datasets"] = {label: _with_mask(member, mask) for label, member in stats["datasets"].items()}
    return out


def config_changes(saved: dict, current: dict, limit: int = 8) -> str:
    """'model.enc_width: 96 -> 128, ...' for the leaves that differ between two config JSON dicts ('' if none)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out
    a, b = flat(saved), flat(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    text = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit])
    return text + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains an OAT tokenizer following `config` in `workdir` (resuming from its latest complete checkpoint).

    Args:
      config: see experiments/configs/oat.py.
      workdir: run directory; holds checkpoints/, tokenizer/, metrics.jsonl, tb/, rate_distortion.png,
        reconstructions.png and final_metrics.json.
    Returns:
      The final held-out metrics of the EMA params ({} when stopped early by SIGTERM/SIGINT).
    Raises:
      NonFiniteLossError: the loss became NaN/Inf (no checkpoint of the diverged state is written).
      ValueError: inconsistent config (batch not divisible by the devices, unknown variant, ...).
    """
    maybe_initialize_distributed(config.distributed)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    try:
        run = _Run(config, workdir)
    except (ValueError, FileNotFoundError, KeyError) as e:  # the config or the data: the message says what to fix
        raise mark_setup_error(e)

    def train_step(i: int) -> dict:
        batch = to_global(run.train_batches.local_batch(i), run.batch_sharding, run.batch_size)
        run.state, step_metrics = run.train_step(run.state, batch)
        return step_metrics

    try:
        metrics = run_steps(config, int(host_value(run.state.step)), run.num_steps, run.restored_step,
                            train_step=train_step, log_train=run.log_train, evaluate_and_log=run.evaluate_and_log,
                            save=run.save, wait=run.ckpt.wait, show_progress=run.is_main and config.train.progress_bar)
        if metrics is None:
            return {}
        run.export(metrics)
        return metrics
    finally:
        close_quietly_on_error(run.ckpt.close, "checkpoint manager")
        close_quietly_on_error(run.writer.close, "metric writer")
