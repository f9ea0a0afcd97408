"""`train_and_evaluate(config, workdir)`: trains an OAT tokenizer; its loop reads top to bottom.

One process per host; every process runs this same function (SPMD): set up (the data members, one dataset being a
mixture of one, each normalized on the host with its own statistics; model, objective, optimizer), restore or
initialise the sharded train state, then for each step assemble the global batch from per-process rows, run the
jitted train step (tokenizer_step.py: the objective's loss, augmentation, update, EMA), log, evaluate the EMA params
on held-out episodes, checkpoint (each step carries the tokenizer's config and normalizers, so it loads with
`OATTokenizer.load`); at the end write the EMA tokenizer to `workdir/tokenizer` (`OATTokenizer.load(workdir)`) and
draw the plots.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from oat_jax import artifacts
from oat_jax.config import OATConfig
from oat_jax.eval.subsets import evenly_spaced
from oat_jax.model import OATModel
from oat_jax.normalizer import Normalizer
from oat_jax.tokenizer import OATTokenizer
from oat_jax.training import data, loop, plots, run_config
from oat_jax.training.tokenizer import evaluation as tokenizer_eval
from oat_jax.training.faults import StopRequest
from oat_jax.training.tokenizer.export import write_in_subprocess
from oat_jax.training.tokenizer.objective import Objective
from oat_jax.training.optim import make_optimizer
from oat_jax.training.progress import Progress
from oat_jax.training.sharding import process_rows
from oat_jax.training.tokenizer.step import init_train_state, make_train_step


PLOTTED_CHUNKS, PLOTTED_PREFIXES = 4, (1, 2, 4, 8)  # reconstructions.png: validation chunks, prefix lengths


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains an OAT tokenizer following `config` in `workdir` (resuming from its latest complete checkpoint).

    Args:
      config: see experiments/configs/oat.py.
      workdir: run directory; holds checkpoints/, tokenizer/, metrics.jsonl, tb/, rate_distortion.png,
        reconstructions.png and final_metrics.json.
    Returns:
      The final held-out metrics of the EMA params ({} when stopped early by SIGTERM/SIGINT: the current step is
      checkpointed and the same command resumes).
    Raises:
      NonFiniteLossError: the loss became NaN/Inf (no checkpoint of the diverged state is written).
      ValueError: inconsistent config (batch not divisible by the devices, unknown variant, ...), marked as a setup
        error (one line on the command line).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    with loop.setup_errors():  # the typed config; a field error names config.<section>.<field>
        run = run_config.tokenizer_run(config)
    run_json = run_config.to_json(run)
    is_main, num_steps = jax.process_index() == 0, int(run.train.num_steps)
    batch_size = int(run.train.batch_size)
    with contextlib.ExitStack() as closing:
        with loop.setup_errors():  # a config or data error here prints as one line
            mesh, batch_sharding = loop.mesh_and_batch_sharding(run)
            members = data.dataset_members(run.data)  # checked before anything is written in the workdir
            ckpt = closing.enter_context(loop.checkpoint_store(run, workdir, artifacts.TOKENIZER_RUN_ITEMS,
                                                               artifacts.BEST_METRIC["tokenizer"]))
            latest = ckpt.latest_step()
            loop.check_run_kind(ckpt, latest, "tokenizer", workdir)
            saved_config, stats = _statistics(run, workdir, members, ckpt, latest)
            normalizer = Normalizer.from_stats(stats["action"], run.normalizer.mode)
            # Every member is normalized on the host with its own statistics (one dataset: the top-level ones).
            is_mixture = len(members) > 1
            normalizers = (data.member_normalizers(stats, members, run.normalizer.mode) if is_mixture
                           else {members[0].label: normalizer})
            cfg = run.model.replace(action_dim=normalizer.action_dim)
            objective = run.objective
            objective.validate(cfg.num_tokens)
            model = OATModel(cfg)
            tx, schedule = make_optimizer(run.optim, num_steps)
            init = functools.partial(init_train_state, model, tx, int(run.seed))
            resume_error = functools.partial(_resume_error, saved_config, run_json, latest, ckpt.manager.directory)
            state, state_sharding = loop.init_or_restore(init, mesh, run.sharding, ckpt, latest, resume_error)
            if latest is not None:
                logging.info("Resumed from the checkpoint of step %d in %s.", latest, ckpt.manager.directory)
            train_step = loop.jit_train_step(
                make_train_step(model, tx, schedule, run.ema, objective, run.augment), state_sharding,
                batch_sharding)
            held_out = _held_out(run, members, normalizers, model, cfg, state_sharding.ema_params,
                                 batch_sharding)
            rows, start = process_rows(batch_sharding, batch_size), int(loop.host_value(state.step))
            batches = data.train_batches(members, list(normalizers.values()), run.data, cfg.horizon, batch_size,
                                         rows, int(run.seed), start)
            assets = {artifacts.STATS_ITEM: stats, artifacts.TOKENIZER_ITEM: artifacts.tokenizer_assets(
                cfg, normalizer, normalizers if is_mixture else None)}
        writer = closing.enter_context(loop.metric_writer(workdir))

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
                    metrics, evaluated = held_out_metrics(state.ema_params, held_out, batch_size), step
                    loop.log_eval(writer, step, metrics)
                    bar.write(_eval_line(step, metrics, cfg.num_tokens, held_out.curve_labels))
                stopping = step < num_steps and stop.agreed_at(step, run.train.log_every)
                if loop.itstime(step, run.checkpoint.every, num_steps) or stopping:
                    loop.save(ckpt, step, state, run_json, assets, metrics if evaluated == step else None)
                    saved = step
                if stopping:  # the records since the last log line are written too
                    if pending:
                        loop.log_train(writer, pending, rate.rate(step), ckpt, run.optim.lr)
                    return loop.stopped(step, ckpt)
            if evaluated != step:  # a finished run resumed: evaluate again for the export
                metrics = held_out_metrics(state.ema_params, held_out, batch_size)
                loop.log_eval(writer, step, metrics)
                bar.write(_eval_line(step, metrics, cfg.num_tokens, held_out.curve_labels))
            if saved != step:
                loop.save(ckpt, step, state, run_json, assets, metrics)
            ckpt.wait()

        # --- export: the EMA tokenizer, final metrics, plots ---
        params = jax.tree.map(np.asarray, multihost_utils.process_allgather(state.ema_params, tiled=True))
        if jax.process_count() == 1:
            OATTokenizer(cfg, params, normalizer, normalizers if is_mixture else None).save(
                os.path.join(workdir, artifacts.WORKDIR_TOKENIZER), overwrite=True)
        else:  # saving is a one-process job: process 0 exports the final checkpoint in a subprocess
            multihost_utils.sync_global_devices("oat_export_start")
            if is_main:
                write_in_subprocess(workdir, step)
            multihost_utils.sync_global_devices("oat_export_done")
        if is_main:
            with open(os.path.join(workdir, artifacts.FINAL_METRICS_FILE), "w", encoding="utf-8") as f:
                json.dump({"step": step, **metrics}, f, indent=1)
            _plot(workdir, OATTokenizer(cfg, params, normalizer), objective, held_out, metrics)
        return metrics


def _statistics(run: run_config.TokenizerRun, workdir: str, members: list[data.Member], ckpt,
                latest: int | None) -> tuple[dict | None, dict]:
    """(the config a resumed run was saved with (None: a fresh run), the action statistics the normalizers are
    fitted on): computed on the train split of a fresh run, restored from the checkpoint when resuming (the
    normalizer must stay the one the checkpoint was trained with); with config.normalizer.unnormalized_dims
    recorded as a mask, so checkpoints and load_pretrained rebuild the same normalizer."""
    saved_config = None
    if latest is None:
        stats = data.member_statistics(members, run.data)
    else:
        saved = ckpt.restore_json(latest, (artifacts.STATS_ITEM,))
        saved_config, stats = saved[artifacts.RUN_CONFIG_ITEM], saved[artifacts.STATS_ITEM]
        loop.warn_if_config_changed(saved_config, run_config.to_json(run), workdir)
    saved_members = list(stats.get("datasets", {}))
    names = [m.label for m in members] if len(members) > 1 else []
    if saved_members != names:
        started = f"the mixture {saved_members}" if saved_members else "one dataset"
        raise ValueError(f"The run in {workdir} was started on {started}; the config names "
                         f"{f'the mixture {names}' if names else 'one dataset'}. Resume with the training "
                         f"data it started with (config.data.path / name), or use a new --workdir.")
    raw_dims = [int(d) for d in str(run.normalizer.unnormalized_dims).split(",") if d.strip()]
    if raw_dims:
        dim = len(stats["action"]["min"])
        if any(not 0 <= d < dim for d in raw_dims):
            raise ValueError(f"config.normalizer.unnormalized_dims={raw_dims} is out of range for {dim}-D actions.")
        stats = _with_mask(stats, [d not in raw_dims for d in range(dim)])
    return saved_config, stats


def _resume_error(saved_config: dict | None, current: dict, step: int, directory: str, e: Exception) -> Exception:
    """The error of a checkpoint whose state does not fit the current config, naming the changed fields."""
    changed = config_changes(saved_config, current)
    return ValueError(
        f"Cannot resume from the checkpoint of step {step} in {directory}: it does not fit the current config"
        + (f" (changed since it was saved: {changed})" if changed else "") + ". Resume with the saved values, or "
        f"start a new run with another --workdir. ({str(e).splitlines()[0] if str(e) else type(e).__name__})")


class HeldOut(NamedTuple):
    """What the held-out evaluation runs on: {label: (jitted eval step with that member's normalizer, its
    validation chunks (M, H, D_a) raw units)} per training member, {label: chunks} of config.data.eval_datasets
    (evaluated with the first member's normalizer), and the labels with their own per-k curves."""
    members: dict[str, tuple[Any, np.ndarray]]
    extras: dict[str, np.ndarray]
    curve_labels: list[str]
    batch_sharding: Any


def _held_out(run: run_config.TokenizerRun, members: list[data.Member], normalizers: dict[str, Normalizer],
              model: OATModel, cfg: OATConfig, params_sharding: Any, batch_sharding: Any) -> HeldOut:
    """The validation chunks of every member and of config.data.eval_datasets, with the jitted eval steps."""
    steps = {label: loop.jit_eval_step(tokenizer_eval.make_eval_step(model, n), params_sharding, batch_sharding)
             for label, n in normalizers.items()}
    chunks = {m.label: data.eval_chunks(m.spec, run.data, cfg.horizon) for m in members}
    extras = data.extra_eval_chunks(run.data, cfg.horizon)  # {label: chunks}, e.g. unseen tasks
    for label, c in extras.items():
        if c.shape[-1] != cfg.action_dim:
            raise ValueError(f"config.data.eval_datasets: {label!r} has {c.shape[-1]}-D actions but the tokenizer is "
                             f"trained on {cfg.action_dim}-D actions; evaluate on datasets of the same action "
                             f"layout.")
    clash = sorted(set(extras) & set(normalizers)) if len(members) > 1 else []
    if clash:
        raise ValueError(f"config.data.eval_datasets: the label(s) {clash} also name mixture members; name the "
                         f"entries as label=DIR.")
    curve_labels = ([m.label for m in members] if len(members) > 1 else []) + list(extras)
    return HeldOut({label: (steps[label], chunks[label]) for label in steps}, extras, curve_labels, batch_sharding)


def held_out_metrics(params: Any, held_out: HeldOut, batch_size: int) -> dict[str, float]:
    """Held-out metrics of `params`: `tokenizer_eval.summarize` over the validation chunks, plus
    `<label>/mse_norm/k{k}` and `<label>/mse_raw/k{k}` for each dataset of config.data.eval_datasets (in the
    first member's units) and, for a mixture, for each member (its own units). A mixture's overall metrics pool
    the members' validation chunks (each normalized with its own statistics; `mse_raw` then adds squared errors of
    different datasets' units)."""
    def sums(eval_step, chunks):
        return loop.held_out_sums(eval_step, params, {"actions": chunks}, held_out.batch_sharding, batch_size)

    member_sums = {label: sums(step, chunks) for label, (step, chunks) in held_out.members.items()}
    metrics = tokenizer_eval.summarize(jax.tree.map(lambda *xs: sum(xs), *member_sums.values()))
    own_curves = dict(member_sums) if len(member_sums) > 1 else {}
    first_step = next(iter(held_out.members.values()))[0]
    own_curves.update({label: sums(first_step, chunks) for label, chunks in held_out.extras.items()})
    for label, s in own_curves.items():
        metrics.update({f"{label}/{k}": v for k, v in tokenizer_eval.summarize(s).items() if k.startswith("mse_")})
    return metrics


def _eval_line(step: int, metrics: dict[str, float], n: int, labels: list[str]) -> str:
    """'step S: held-out MSE k=1 ..., k=N ...' plus the same for each member / extra evaluation dataset."""
    extra = "".join(f"; {label} k=1 {metrics[f'{label}/mse_norm/k1']:.4f}, k={n} "
                    f"{metrics[f'{label}/mse_norm/k{n}']:.4f}" for label in labels)
    return f"step {step}: held-out MSE k=1 {metrics['mse_norm/k1']:.4f}, k={n} {metrics['val_mse']:.4f}{extra}"


def _plot(workdir: str, tok: OATTokenizer, objective: Objective,
          held_out: HeldOut, metrics: dict[str, float]) -> None:
    """rate_distortion.png and reconstructions.png (a few evenly spaced validation chunks) in the workdir."""
    n = tok.config.num_tokens
    curves = {"held-out episodes": tokenizer_eval.mse_curves(metrics, n)}
    curves.update({label: tokenizer_eval.mse_curves(metrics, n, prefix=f"{label}/")
                   for label in held_out.curve_labels})
    trained_ks, _ = objective.distribution(n)
    plots.plot_rate_distortion(curves, os.path.join(workdir, "rate_distortion.png"), trained_ks)
    chunks = evenly_spaced(next(iter(held_out.members.values()))[1], PLOTTED_CHUNKS)
    tokens, _ = tok.tokenize(chunks)
    decodes = {k: tok.detokenize(tokens, lengths=k)[0] for k in PLOTTED_PREFIXES if k <= n}
    plots.plot_reconstructions(chunks, decodes, os.path.join(workdir, "reconstructions.png"))


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
