"""The pieces every train loop uses, as plain functions. The loops themselves are read top to bottom in each
trainer's `train_and_evaluate` (tokenizer/trainer.py, policy/trainer.py, policy/diffusion_trainer.py):

    set up (config and data errors print as one line) -> open the checkpoint store -> init or restore the sharded
    state -> for each step: batch, step, log (NaN guard), evaluate, checkpoint, stop on SIGTERM/SIGINT -> export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding

from oat_jax import artifacts
from oat_jax.training.checkpointing import CheckpointStore, abstract_like
from oat_jax.training.faults import NonFiniteLossError, close_quietly_on_error, mark_setup_error, tree_all_finite
from oat_jax.training.metrics import MetricWriter
from oat_jax.training.sharding import (batch_sharding, check_batch_divisible, make_mesh, process_rows, replicated,
                                       to_global, tree_shardings)

Metrics = dict[str, float]
LOSS_HINT = "lower config.optim.lr or check the data"


def host_value(x: jax.Array) -> np.ndarray:
    """numpy copy of a replicated (possibly multi-process) jax.Array."""
    return np.asarray(x.addressable_data(0)) if not x.is_fully_addressable else np.asarray(x)


def itstime(step: int, every: int, total: int) -> bool:
    """True at every `every`-th step and at the last one."""
    return step % int(every) == 0 or step == total


@contextlib.contextmanager
def setup_errors() -> Iterator[None]:
    """Marks a ValueError / FileNotFoundError / KeyError raised inside as a config or data error (its message says
    what to change): the command line prints it as one line instead of a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise mark_setup_error(e)


def mesh_and_batch_sharding(config: Any) -> tuple[Mesh, NamedSharding]:
    """The device mesh of `config.sharding.fsdp` and the batch sharding over it; ValueError unless
    config.train.batch_size splits evenly over the devices."""
    mesh = make_mesh(config.sharding.fsdp)
    check_batch_divisible(int(config.train.batch_size), mesh)
    return mesh, batch_sharding(mesh)


@contextlib.contextmanager
def checkpoint_store(config: Any, workdir: str, run_items: tuple[str, ...],
                     best_metric: str) -> Iterator[CheckpointStore]:
    """`workdir/checkpoints` with the run kind's items (`artifacts.*_RUN_ITEMS`), keeping config.checkpoint.keep_last
    recent steps and the one with the lowest `best_metric`, written in the background; closed (pending writes
    finished) on exit."""
    store = CheckpointStore(os.path.join(workdir, "checkpoints"), run_items[3:], config.checkpoint.keep_last,
                            keep_best=1, best_metric=best_metric, async_save=True)
    try:
        yield store
    finally:
        close_quietly_on_error(store.close, "checkpoint manager")


@contextlib.contextmanager
def metric_writer(workdir: str) -> Iterator[MetricWriter]:
    """`workdir/metrics.jsonl` and TensorBoard events (process 0 writes; others get a no-op writer)."""
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
        yield writer
    finally:
        close_quietly_on_error(writer.close, "metric writer")


def check_run_kind(ckpt: CheckpointStore, step: int | None, kind: str, workdir: str) -> None:
    """ValueError when the latest checkpoint of `workdir` was written by another kind of run ('tokenizer' or
    'policy') than the one starting: it cannot resume from it."""
    if step is None:
        return
    found = artifacts.run_kind(epath.Path(ckpt.step_dir(step)))
    if found != kind:
        raise ValueError(f"--workdir={workdir} holds a {found} run (checkpoint step {step}); a {kind} run cannot "
                         f"resume from it: choose a new --workdir.")


def init_or_restore(init_fn: Callable[[], Any], mesh: Mesh, sharding_cfg: Any,
                    ckpt: CheckpointStore, step: int | None,
                    on_mismatch: Callable[[Exception], Exception] | None = None) -> tuple[Any, Any]:
    """(state, its shardings): `init_fn()` jitted and sharded by `sharding_cfg` when `step` is None, else the
    checkpoint of `step` restored into the same shardings (`on_mismatch(e)` turns a shape/structure error into
    the error to raise)."""
    abstract = jax.eval_shape(init_fn)
    shardings = tree_shardings(abstract, mesh, sharding_cfg)
    if step is None:
        return jax.jit(init_fn, out_shardings=shardings)(), shardings
    try:
        return ckpt.restore(step, abstract_like(abstract, shardings)), shardings
    except (ValueError, TypeError, KeyError) as e:
        if on_mismatch is None:
            raise
        raise on_mismatch(e) from e


def jit_train_step(train_step: Callable, state_sharding: Any, batch_sharding: NamedSharding,
                   frozen: Any = None) -> Callable:
    """`train_step(state, batch dict) -> (state, metrics)` jitted: state and batch sharded, the state donated,
    metrics replicated. With `frozen` (a pytree of host arrays, e.g. a frozen tokenizer's params, equal on every
    process), `train_step(state, batch, frozen)` gets them replicated on every device, placed once."""
    rep = replicated(batch_sharding.mesh)
    if frozen is None:
        return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, rep),
                       donate_argnums=(0,))
    placed = jax.tree.map(lambda x: jax.make_array_from_process_local_data(rep, np.asarray(x)), frozen)
    jitted = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding, rep),
                     out_shardings=(state_sharding, rep), donate_argnums=(0,))
    return lambda state, batch: jitted(state, batch, placed)


def jit_eval_step(eval_step: Callable, params_sharding: Any, batch_sharding: NamedSharding) -> Callable:
    """`eval_step(params, batch dict) -> sums` jitted with the params' and the batch's shardings, sums
    replicated."""
    return jax.jit(eval_step, in_shardings=(params_sharding, batch_sharding),
                   out_shardings=replicated(batch_sharding.mesh))


@contextlib.contextmanager
def prefetched(batches: Any, start: int, stop: int, sharding: NamedSharding, batch_size: int,
               depth: int = 2) -> Iterator[Iterator[Any]]:
    """The global batches of steps start .. stop - 1, assembled and placed on the devices (`to_global`, sharded by
    `sharding`) by a background thread up to `depth` steps ahead, so the host's batch work overlaps the device's
    train step. `batches.local_batch(step)` gives this process's rows; an error there is raised by `next`."""
    buffer: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    done = threading.Event()

    def put(item) -> bool:  # False once the consumer has left
        while not done.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for step in range(start, stop):
                if not put((True, to_global(batches.local_batch(step), sharding, batch_size))):
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised by its next())
            put((False, e))

    def consume():
        for _ in range(start, stop):
            ok, item = buffer.get()
            if not ok:
                raise item
            yield item

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        done.set()
        thread.join(timeout=5.0)


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


def held_out_sums(eval_step: Callable, params: Any, arrays: dict[str, np.ndarray], sharding: NamedSharding,
                  batch_size: int) -> dict:
    """Sums of `eval_step(params, batch)` over all rows of `arrays` ({name: (M, ...)}, every process holding all
    rows), in padded global batches of `batch_size` whose `weights` (0 on padding) the step applies; numpy."""
    rows = process_rows(sharding, batch_size)
    total = None
    for idx, weights in padded_batches(np.arange(len(next(iter(arrays.values())))), batch_size):
        local = {name: v[idx[rows]] for name, v in arrays.items()}
        local["weights"] = weights[rows]
        sums = eval_step(params, to_global(local, sharding, batch_size))
        total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
    return jax.tree.map(host_value, total)


class StepRate:
    """Steps per second since the previous call of `rate`."""

    def __init__(self, step: int):
        self._time, self._step = time.perf_counter(), step

    def rate(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self._step) / max(now - self._time, 1e-9)
        self._time, self._step = now, step
        return rate


def log_train(writer: MetricWriter, pending: list[tuple[int, dict]], rate: float, ckpt: CheckpointStore,
              lr: float) -> Metrics:
    """Writes the train metrics of the steps in `pending` ([(step, device metrics)]) and steps/s; returns the last
    step's values. Raises NonFiniteLossError on a NaN/Inf loss (`lr`: config.optim.lr, named in the message)."""
    logged = [(s, {k: float(host_value(v)) for k, v in m.items()}) for s, m in pending]
    for s, values in logged:
        writer.write_scalars(s, {f"train/{k}": v for k, v in values.items()})
    for s, values in logged:
        if not np.isfinite(values["loss"]):
            writer.flush()
            raise NonFiniteLossError(
                f"Training loss is {values['loss']} at step {s}: stopping without writing a checkpoint of the "
                f"diverged state. The last good checkpoint is step {ckpt.latest_step()}; {LOSS_HINT} "
                f"(config.optim.lr is {lr}).")
    writer.write_scalars(logged[-1][0], {"train/steps_per_sec": rate})
    return logged[-1][1]


def log_eval(writer: MetricWriter, step: int, metrics: Metrics) -> None:
    """Writes the held-out metrics of `step`; raises NonFiniteLossError when a loss/MSE among them is NaN/Inf (such
    a step is never checkpointed, so never 'best')."""
    writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    bad = sorted(k for k, v in metrics.items() if ("mse" in k or "loss" in k) and not np.isfinite(v))
    if bad:
        writer.flush()
        raise NonFiniteLossError(f"Held-out metrics {bad[:4]} are NaN/Inf at step {step}: stopping without a "
                                 f"checkpoint of this step. Check the evaluation data for non-finite values.")


def save(ckpt: CheckpointStore, step: int, state: Any, config_json: dict, assets: dict[str, dict],
         metrics: Metrics | None) -> None:
    """Checkpoints `state` (params, EMA params, optimizer state), the run's config (`run_config.to_json`) and JSON
    `assets` at `step`,
    scored by `metrics` (this step's held-out metrics, or None); raises NonFiniteLossError instead when the params
    hold NaN/Inf."""
    if not bool(host_value(tree_all_finite((state.params, state.ema_params)))):
        raise NonFiniteLossError(f"Params are NaN/Inf at step {step}: not writing a checkpoint. The last good "
                                 f"checkpoint is step {ckpt.latest_step()}; {LOSS_HINT}.")
    scored = None if metrics is None else {ckpt.best_metric: float(metrics[ckpt.best_metric])}
    ckpt.save(step, state, config_json, assets, scored)


def warn_if_config_changed(saved: dict, current: dict, workdir: str) -> None:
    """Logs a warning when a resumed run's config (`run_config.to_json`) differs from its checkpoint's."""
    if saved != current:
        logging.warning("Resuming from %s with a config that differs from the checkpoint's; using the new one.",
                        workdir)


def stopped(step: int, ckpt: CheckpointStore) -> Metrics:
    """After a stop signal (the step is checkpointed): waits for the write and returns {} (nothing exported)."""
    ckpt.wait()
    logging.warning("Stopped by signal at step %d; the checkpoint is saved. Run the same command to resume.", step)
    return {}
