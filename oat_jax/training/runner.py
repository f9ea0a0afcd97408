"""`Runner`: the shape both trainers share (tokenizer: `tokenizer_trainer.py`, policy: `policy_trainer.py`).

A run: mesh and batch shardings, the checkpoint store with the run kind's items, the metric writer, the sharded
train state (initialised or restored), the weighted held-out evaluation loop, the non-finite guards (a NaN/Inf loss
stops the run; non-finite params are never checkpointed), and `run()`, which drives `loop.run_steps` and then the
subclass's `finish`. A subclass sets up its model, data and jitted steps in `setup` and says what a train step,
an evaluation, a log line and the checkpoint assets are.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from oat_jax import artifacts
from oat_jax.training.checkpointing import CheckpointStore, abstract_like
from oat_jax.training.faults import NonFiniteLossError, close_quietly_on_error, mark_setup_error, tree_all_finite
from oat_jax.training.loop import config_json, run_steps
from oat_jax.training.metrics import MetricWriter
from oat_jax.training.progress import Progress
from oat_jax.training.sharding import (batch_sharding, check_batch_divisible, make_mesh, process_rows, replicated,
                                       to_global, tree_shardings)


def host_value(x: jax.Array) -> np.ndarray:
    """numpy copy of a replicated (possibly multi-process) jax.Array."""
    return np.asarray(x.addressable_data(0)) if not x.is_fully_addressable else np.asarray(x)


def padded_batches(rows: np.ndarray, batch_size: int):
    """Yields (rows[i:i+batch_size] padded to batch_size by repeating the last row, weights (batch_size,) float32
    with 0 on the padding) over the whole of `rows` (M, ...)."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n = len(chunk)
        weights = np.zeros((batch_size,), np.float32)
        weights[:n] = 1.0
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        yield chunk, weights


class Runner:
    """One training run of kind `kind` ('tokenizer' | 'policy') in `workdir`; see the module docstring.

    Attributes a subclass uses: config, workdir, is_main, mesh, batch_size, batch_sharding, ckpt, writer,
    state (after `init_state`), state_sharding, restored_step (None: a fresh run).
    """

    kind = ""
    run_items: tuple[str, ...] = ()  # checkpoint items (default: artifacts' items of `kind`)
    loss_hint = "lower config.optim.lr or check the data"

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        self.is_main = jax.process_index() == 0
        self.mesh = make_mesh(config.mesh)
        self.batch_size = int(config.train.batch_size)
        check_batch_divisible(self.batch_size, self.mesh, int(config.optim.get("accum_steps", 1)))
        check_batch_divisible(int(config.train.eval_batch_size), self.mesh)
        self.batch_sharding = batch_sharding(self.mesh)
        self.best_metric = artifacts.BEST_METRIC[self.kind]
        json_items = (self.run_items or (artifacts.TOKENIZER_RUN_ITEMS if self.kind == "tokenizer"
                                         else artifacts.POLICY_RUN_ITEMS))[3:]
        self.before_checkpoints()
        self.ckpt = CheckpointStore(os.path.join(workdir, artifacts.CHECKPOINTS_DIR), json_items,
                                    config.checkpoint.keep_last, config.checkpoint.keep_best, self.best_metric,
                                    config.checkpoint.async_save)
        self.writer = None
        try:
            self.restored_step = self.ckpt.latest_step()
            self.setup()
            self.writer = MetricWriter(workdir, enabled=self.is_main)
        except BaseException:  # release Orbax's threads, so the error is the last thing printed
            close_quietly_on_error(self.ckpt.close, "checkpoint manager")
            raise

    # ----- what a subclass provides -----
    def before_checkpoints(self) -> None:
        """Checks that must fail before anything is created in the workdir (config errors)."""

    def setup(self) -> None:
        """Data, model, state (`init_state`) and jitted steps."""
        raise NotImplementedError

    def train_step(self, i: int) -> dict:
        """Runs update i + 1 on the batch of index i (`self.train_batches.local_batch(i)`, this process's rows)
        with `self.jitted_train_step` (`jit_train`), keeps the new state, returns its metrics (device arrays)."""
        batch = to_global(self.train_batches.local_batch(i), self.batch_sharding, self.batch_size)
        self.state, step_metrics = self.jitted_train_step(self.state, batch)
        return step_metrics

    def evaluate(self, params: Any) -> dict[str, float]:
        """Held-out metrics of `params` (must hold `best_metric`)."""
        raise NotImplementedError

    def progress_fields(self, values: dict[str, float]) -> dict[str, float]:
        """The train metrics shown on the progress bar."""
        return {"loss": values["loss"]}

    def eval_line(self, step: int, metrics: dict[str, float]) -> str:
        """The line printed after an evaluation."""
        return f"step {step}: {self.best_metric} {metrics[self.best_metric]:.4f}"

    def assets(self) -> dict[str, dict]:
        """{JSON item name: content} saved with every checkpoint (the run kind's items)."""
        raise NotImplementedError

    def finish(self, metrics: dict[str, float]) -> None:
        """Writes the final artifact (and plots, final metrics) after the last checkpoint."""
        raise NotImplementedError

    # ----- shared pieces -----
    def init_state(self, init_fn: Callable[[], Any], on_mismatch: Callable[[Exception], Exception] | None = None):
        """Sets `state` to `init_fn()` (jitted, sharded by config.sharding) or the latest checkpoint's state."""
        abstract = jax.eval_shape(init_fn)
        self.state_sharding = tree_shardings(abstract, self.mesh, self.config.sharding)
        if self.restored_step is None:
            self.state = jax.jit(init_fn, out_shardings=self.state_sharding)()
            return
        try:
            self.state = self.ckpt.restore(self.restored_step, abstract_like(abstract, self.state_sharding))
        except (ValueError, TypeError, KeyError) as e:
            if on_mismatch is None:
                raise
            raise on_mismatch(e) from e

    def jit_train(self, train_step: Callable) -> Callable:
        """`train_step(state, batch dict) -> (state, metrics)` jitted with the state's and batch shardings, the
        state donated, metrics replicated."""
        return jax.jit(train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                       out_shardings=(self.state_sharding, replicated(self.mesh)), donate_argnums=(0,))

    def jit_eval(self, eval_step: Callable) -> Callable:
        """`eval_step(params, batch dict)` jitted with the EMA params' and batch shardings, replicated output."""
        return jax.jit(eval_step, in_shardings=(self.state_sharding.ema_params, self.batch_sharding),
                       out_shardings=replicated(self.mesh))

    def weighted_sums(self, eval_step: Callable, params: Any, arrays: dict[str, np.ndarray]) -> dict:
        """Sums of `eval_step(params, batch)` over all rows of `arrays` ({name: (M, ...)}), in padded batches of
        config.train.eval_batch_size whose `weights` (0 on padding) the step applies; host numpy values."""
        batch = int(self.config.train.eval_batch_size)
        rows = process_rows(self.batch_sharding, batch)
        total = None
        for idx, weights in padded_batches(np.arange(len(next(iter(arrays.values())))), batch):
            local = {name: v[idx[rows]] for name, v in arrays.items()}
            local["weights"] = weights[rows]
            sums = eval_step(params, to_global(local, self.batch_sharding, batch))
            total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
        return jax.tree.map(host_value, total)

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
                    f"diverged state. The last good checkpoint is step {self.ckpt.latest_step()}; "
                    f"{self.loss_hint} (config.optim.lr is {self.config.optim.lr}).")
        step = logged[-1][0]
        self.writer.write_scalars(step, {"train/steps_per_sec": rate})
        bar.update(step, **self.progress_fields(logged[-1][1]), steps_per_sec=rate)

    def evaluate_and_log(self, step: int, bar: Progress) -> dict[str, float]:
        """Evaluates the EMA params, logs the metrics at `step` and returns them; raises NonFiniteLossError when a
        held-out loss/MSE is NaN/Inf (such a step is never checkpointed, so never 'best')."""
        metrics = self.evaluate(self.state.ema_params)
        self.writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        bad = sorted(k for k, v in metrics.items() if ("mse" in k or "loss" in k) and not np.isfinite(v))
        if bad:
            self.writer.flush()
            raise NonFiniteLossError(f"Held-out metrics {bad[:4]} are NaN/Inf at step {step}: stopping without a "
                                     f"checkpoint of this step. Check the evaluation data for non-finite values.")
        bar.write(self.eval_line(step, metrics))
        return metrics

    def save(self, step: int, metrics: dict[str, float] | None) -> None:
        """Checkpoints the current state at `step` unless it holds non-finite values (then raises)."""
        if not bool(host_value(tree_all_finite((self.state.params, self.state.ema_params)))):
            raise NonFiniteLossError(f"Params are NaN/Inf at step {step}: not writing a checkpoint. The last good "
                                     f"checkpoint is step {self.ckpt.latest_step()}; {self.loss_hint}.")
        scored = None if metrics is None else {self.best_metric: float(metrics[self.best_metric])}
        self.ckpt.save(step, self.state, config_json(self.config), self.assets(), scored)

    @classmethod
    def launch(cls, config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
        """Creates `workdir`, sets the run up (an error of the config or the data is marked as a setup error: the
        command line prints it as one line) and runs it; returns `run()`'s metrics."""
        workdir = os.path.abspath(os.path.expanduser(workdir))
        os.makedirs(workdir, exist_ok=True)
        try:
            run = cls(config, workdir)
        except (ValueError, FileNotFoundError, KeyError) as e:  # the config or the data: the message says what to fix
            raise mark_setup_error(e)
        return run.run()

    def run(self) -> dict[str, float]:
        """Trains to config.train.num_steps (resuming), then `finish`; returns the final held-out metrics ({} when
        stopped by SIGTERM/SIGINT: the current step is checkpointed and the same command resumes)."""
        try:
            metrics = run_steps(self.config, int(host_value(self.state.step)), int(self.config.train.num_steps),
                                self.restored_step, train_step=self.train_step, log_train=self.log_train,
                                evaluate_and_log=self.evaluate_and_log, save=self.save, wait=self.ckpt.wait,
                                show_progress=self.is_main and self.config.train.progress_bar)
            if metrics is None:
                return {}
            self.finish(metrics)
            return metrics
        finally:
            close_quietly_on_error(self.ckpt.close, "checkpoint manager")
            if self.writer is not None:
                close_quietly_on_error(self.writer.close, "metric writer")
