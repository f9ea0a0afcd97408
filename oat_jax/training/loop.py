"""The step loop both trainers share (tokenizer: `trainer.py`, policy: `policy_trainer.py`).

`run_steps` owns the schedule — train, log every `log_every`, evaluate every `eval_every`, checkpoint every
`ckpt.every`, stop cleanly on SIGTERM/SIGINT with a checkpoint of the current step — and leaves what a step, a
log line, an evaluation and a checkpoint are to the caller.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

import jax
import ml_collections

from oat_jax.training.faults import StopRequest
from oat_jax.training.progress import Progress

Metrics = dict[str, float]


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON (what checkpoints store, and what a resumed run compares against)."""
    return json.loads(config.to_json_best_effort())


def run_steps(config: ml_collections.ConfigDict, step: int, num_steps: int, last_saved: int | None, *,
              train_step: Callable[[int], dict],
              log_train: Callable[[list[tuple[int, dict]], float, Progress], None],
              evaluate_and_log: Callable[[int, Progress], Metrics],
              save: Callable[[int, Metrics | None], None],
              wait: Callable[[], None],
              show_progress: bool) -> Metrics | None:
    """Runs steps `step`+1 .. `num_steps` and returns the held-out metrics of the last step (None when stopped).

    Args:
      config: the run config; reads train.log_every, train.eval_every and checkpoint.every.
      step: the step already done (0, or the restored checkpoint's step).
      num_steps: the last step.
      last_saved: step of the latest checkpoint on disk (None: none yet).
      train_step: i -> metrics of device arrays; runs update i + 1 (the batch of index i) and keeps the new state.
      log_train: (pending [(step, metrics)], steps/s, bar) -> None; writes the train metrics since the last call.
      evaluate_and_log: (step, bar) -> held-out metrics of the current EMA params, logged at `step`.
      save: (step, held-out metrics of that step or None) -> None; checkpoints the current state.
      wait: blocks until pending checkpoint writes are done.
      show_progress: draw the progress bar (process 0 with config.train.progress_bar).
    Returns:
      The held-out metrics of the final step, after its checkpoint is written; None when a stop signal arrived
      (the current step is then checkpointed and the same command resumes).
    """
    log_every, eval_every = int(config.train.log_every), int(config.train.eval_every)
    ckpt_every = int(config.checkpoint.every)
    stop_every = 1 if jax.process_count() == 1 else log_every  # multi-process: the stop check is a collective
    metrics, metrics_step, pending = {}, None, []
    with StopRequest() as stop, Progress(num_steps, step, show_progress) as bar:
        t_last, s_last = time.perf_counter(), step
        while step < num_steps:
            step_metrics = train_step(step)
            step += 1
            pending.append((step, step_metrics))
            last = step == num_steps
            if step % log_every == 0 or last:
                now = time.perf_counter()
                log_train(pending, (step - s_last) / max(now - t_last, 1e-9), bar)
                t_last, s_last, pending = now, step, []
            if step % eval_every == 0 or last:
                metrics, metrics_step = evaluate_and_log(step, bar), step
            if step % ckpt_every == 0 or last:
                save(step, metrics if metrics_step == step else None)
                last_saved = step
            if step % stop_every == 0 and not last and stop.agreed():
                if last_saved != step:
                    save(step, metrics if metrics_step == step else None)
                wait()
                logging.warning("Stopped by signal at step %d; the checkpoint is saved. Run the same command "
                                "to resume.", step)
                return None
    if metrics_step != step:  # resumed a finished run: evaluate again for the export
        metrics = evaluate_and_log(step, bar)
    if last_saved != step:
        save(step, metrics)
    wait()
    return metrics
