"""`train_and_evaluate(config, workdir)`: trains an OAT tokenizer (a `runner.Runner`).

One process per host; every process runs this same function (SPMD). The loop: restore or initialise the sharded
train state, then for each step assemble the global batch from per-process rows, run the jitted train step,
log, evaluate the EMA params on held-out episodes, checkpoint (each step carries the tokenizer's config and
normalizers, so it loads with `OATTokenizer.load`); at the end write the EMA tokenizer to `workdir/tokenizer`
(`OATTokenizer.load(workdir)`) and draw the plots.
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

from oat_jax import artifacts
from oat_jax.eval.subsets import evenly_spaced
from oat_jax.model import OATModel
from oat_jax.normalizer import Normalizer
from oat_jax.tokenizer import OATTokenizer
from oat_jax.training import data, plots, tokenizer_eval
from oat_jax.training.final_tokenizer import write_in_subprocess
from oat_jax.training.loop import config_json
from oat_jax.training.optim import make_optimizer
from oat_jax.training.runner import Runner, host_value
from oat_jax.training.sharding import maybe_initialize_distributed, process_rows
from oat_jax.training.objective import Objective
from oat_jax.training.tokenizer_step import init_train_state, make_train_step, model_config


class TokenizerRun(Runner):
    """One tokenizer training run: data members, statistics and normalizers, model, jitted steps, evaluation."""

    kind = "tokenizer"

    def before_checkpoints(self) -> None:
        """The training data's members (config errors surface before anything is created in the workdir)."""
        self.members = data.dataset_members(self.config.data)
        self.spec = self.members[0].spec
        self.is_mixture = len(self.members) > 1

    def setup(self) -> None:
        """Statistics, normalizers, model, (restored) state, jitted steps, data."""
        config, workdir, latest = self.config, self.workdir, self.restored_step
        saved_config = None
        if latest is None:
            self.stats = data.member_statistics(self.members, config.data)
        else:  # the normalizer must stay the one the checkpoint was trained with
            saved = self.ckpt.restore_json(latest, (artifacts.STATS_ITEM,))
            saved_config, self.stats = saved[artifacts.RUN_CONFIG_ITEM], saved[artifacts.STATS_ITEM]
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
        self.normalizer = Normalizer.from_stats(self.stats["action"], config.normalizer.mode)
        # a mixture: each member normalized with its own statistics, on the host (the train step sees normalized
        # chunks and an identity normalizer); one dataset: the train step normalizes
        self.normalizers = ({self.members[0].label: self.normalizer} if not self.is_mixture else
                            data.member_normalizers(self.stats, self.members, config.normalizer.mode))
        self.model_config = model_config(config.model, self.normalizer.action_dim)
        self.objective = Objective.from_dict(config.objective)
        self.objective.validate(self.model_config.num_tokens)
        self.model = OATModel(self.model_config)
        self.num_steps = int(config.train.num_steps)
        self.tx, self.schedule = make_optimizer(config.optim, self.num_steps)
        def mismatch(e: Exception) -> Exception:
            changed = config_changes(saved_config, config_json(config))
            return ValueError(
                f"Cannot resume from the checkpoint of step {latest} in {self.ckpt.manager.directory}: it does not "
                f"fit the current config" + (f" (changed since it was saved: {changed})" if changed else "") +
                f". Resume with the saved values, or start a new run with another --workdir. "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")

        self.init_state(functools.partial(init_train_state, self.model, self.tx, int(config.seed)), mismatch)
        if latest is not None:
            logging.info("Resumed from the checkpoint of step %d in %s.", latest, self.ckpt.manager.directory)
        self.jitted_train_step = self.jit_train(
            make_train_step(self.model, self.tx, self.schedule,
                            Normalizer.identity(self.normalizer.action_dim) if self.is_mixture
                            else self.normalizer, config.ema, self.objective, config.get("augment"),
                            int(config.optim.accum_steps), self.mesh))
        self.eval_steps = {label: self.jit_eval(tokenizer_eval.make_eval_step(self.model, normalizer))
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

    def _eval_sums(self, params: Any, chunks: np.ndarray, eval_step=None) -> dict:
        return self.weighted_sums(eval_step or self.eval_step, params, {"actions": chunks})

    def evaluate(self, params: Any) -> dict[str, float]:
        """Held-out metrics of `params`: `tokenizer_eval.summarize` over the validation chunks, plus
        `<label>/mse_norm/k{k}` and `<label>/mse_raw/k{k}` for each dataset of config.data.eval_datasets (in the
        default normalizer's units) and, for a mixture, for each member (its own units). A mixture's overall
        metrics pool the members' validation chunks (each normalized with its own statistics; `mse_raw` then adds
        squared errors of different datasets' units)."""
        if not self.is_mixture:
            metrics = tokenizer_eval.summarize(self._eval_sums(params, self.eval_chunks))
        else:
            member_sums = {label: self._eval_sums(params, self.member_eval_chunks[label], self.eval_steps[label])
                           for label in self.normalizers}
            metrics = tokenizer_eval.summarize(jax.tree.map(lambda *xs: sum(xs), *member_sums.values()))
            for label, sums in member_sums.items():
                metrics.update({f"{label}/{k}": v for k, v in tokenizer_eval.summarize(sums).items()
                                if k.startswith("mse_")})
        for label, chunks in self.extra_eval_chunks.items():
            extra = tokenizer_eval.summarize(self._eval_sums(params, chunks))
            metrics.update({f"{label}/{k}": v for k, v in extra.items() if k.startswith("mse_")})
        return metrics

    def eval_line(self, step: int, metrics: dict[str, float]) -> str:
        """'step S: held-out MSE k=1 ..., k=N ...' plus the same for each member / extra evaluation dataset."""
        n = self.model_config.num_tokens
        extra = "".join(f"; {label} k=1 {metrics[f'{label}/mse_norm/k1']:.4f}, k={n} "
                        f"{metrics[f'{label}/mse_norm/k{n}']:.4f}" for label in self.curve_labels())
        return f"step {step}: held-out MSE k=1 {metrics['mse_norm/k1']:.4f}, k={n} {metrics['val_mse']:.4f}{extra}"

    def assets(self) -> dict[str, dict]:
        """The statistics the normalizers were fitted on, and the tokenizer's config and normalizers."""
        return {artifacts.STATS_ITEM: self.stats,
                artifacts.TOKENIZER_ITEM: artifacts.tokenizer_assets(
                    self.model_config, self.normalizer, self.normalizers if self.is_mixture else None)}

    def finish(self, metrics: dict[str, float]) -> None:
        """Writes the EMA tokenizer to `<workdir>/tokenizer`, the plots and `final_metrics.json`."""
        path = os.path.join(self.workdir, artifacts.WORKDIR_TOKENIZER)
        step = int(host_value(self.state.step))
        params = jax.tree.map(np.asarray, multihost_utils.process_allgather(self.state.ema_params, tiled=True))
        if jax.process_count() == 1:
            OATTokenizer(self.model_config, params, self.normalizer,
                         self.normalizers if self.is_mixture else None).save(path, overwrite=True)
        else:  # saving is a one-process job: process 0 exports the final checkpoint in a subprocess
            multihost_utils.sync_global_devices("oat_export_start")
            if self.is_main:
                write_in_subprocess(self.workdir, step)
            multihost_utils.sync_global_devices("oat_export_done")
        if self.is_main:
            with open(os.path.join(self.workdir, artifacts.FINAL_METRICS_FILE), "w", encoding="utf-8") as f:
                json.dump({"step": step, **metrics}, f, indent=1)
            self.plot(OATTokenizer(self.model_config, params, self.normalizer), metrics)

    def curve_labels(self) -> list[str]:
        """Labels with their own per-k metrics: a mixture's members, then config.data.eval_datasets."""
        return ([m.label for m in self.members] if self.is_mixture else []) + list(self.extra_eval_chunks)

    def plot(self, tok: OATTokenizer, metrics: dict[str, float]) -> None:
        """rate_distortion.png and reconstructions.png (a few evenly spaced validation chunks) in the workdir."""
        c = self.model_config
        curves = {"held-out episodes": tokenizer_eval.mse_curves(metrics, c.num_tokens)}
        curves.update({label: tokenizer_eval.mse_curves(metrics, c.num_tokens, prefix=f"{label}/")
                       for label in self.curve_labels()})
        trained_ks, _ = self.objective.distribution(c.num_tokens)
        plots.plot_rate_distortion(curves, os.path.join(self.workdir, "rate_distortion.png"), trained_ks)
        num = int(self.config.plots.num_chunks)
        chunks = evenly_spaced(self.eval_chunks, num)
        tokens, _ = tok.tokenize(chunks)
        ks = [k for k in self.config.plots.prefix_lengths if k <= self.model_config.num_tokens]
        decodes = {k: tok.detokenize(tokens, lengths=k)[0] for k in ks}
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
    return TokenizerRun.launch(config, workdir)
