"""Faults of a real `python -m experiments.train` process: SIGTERM saves and exits cleanly; after kill -9 (and a
leftover temporary checkpoint directory) the next run resumes from the last complete checkpoint and finishes."""

import json
import os
import signal
import time

import pytest

import train_helpers
from train_helpers import tiny_dataset  # noqa: F401  (pytest fixture)

STEPS = 150  # long enough that the signals below arrive mid-training
FLAGS = (f"--config.train.num_steps={STEPS}", "--config.train.eval_every=100000", "--config.train.log_every=1")


def _wait_for(predicate, proc, log, timeout=240.0):
    start = time.time()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"training exited early (rc {proc.returncode}):\n{train_helpers.read_log(log)[-3000:]}")
        if time.time() - start > timeout:
            proc.kill()
            pytest.fail(f"timed out:\n{train_helpers.read_log(log)[-3000:]}")
        time.sleep(0.2)


def _logged_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip() and "train/loss" in line]


def _complete_steps(workdir):
    root = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(d) for d in os.listdir(root)
                  if d.isdigit() and os.path.exists(os.path.join(root, d, "_CHECKPOINT_METADATA")))


def test_sigterm_then_kill9_then_resume(tmp_path, tiny_dataset):
    data = tiny_dataset
    workdir = str(tmp_path / "run")
    env = train_helpers.subprocess_env(2, cache_dir=str(tmp_path / "jax_cache"))

    # 1. SIGTERM mid-training: a checkpoint at the current step, exit code 0, no tokenizer yet.
    log1 = str(tmp_path / "run1.log")
    # log_every 7: the records since the last log line must be written at the stop too
    proc = train_helpers.popen(train_helpers.train_command(workdir, data, *FLAGS, "--config.checkpoint.every=100000",
                                                           "--config.train.log_every=7"), env, log1)
    _wait_for(lambda: len(_logged_steps(workdir)) >= 3, proc, log1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, train_helpers.read_log(log1)[-3000:]
    stopped = _complete_steps(workdir)
    assert len(stopped) == 1 and 3 <= stopped[0] < STEPS, stopped
    assert _logged_steps(workdir) == list(range(1, stopped[0] + 1))  # every step up to the stop, once
    assert "Stopped by signal" in train_helpers.read_log(log1)
    assert not os.path.exists(os.path.join(workdir, "tokenizer"))
    first_run_steps = _logged_steps(workdir)

    # 2. Resume, then kill -9 right after a later checkpoint is complete.
    log2 = str(tmp_path / "run2.log")
    proc = train_helpers.popen(train_helpers.train_command(workdir, data, *FLAGS, "--config.checkpoint.every=5"),
                               env, log2)
    _wait_for(lambda: any(s > stopped[0] for s in _complete_steps(workdir)), proc, log2)
    assert _logged_steps(workdir)[len(first_run_steps)] == stopped[0] + 1  # continued, not restarted
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    complete = _complete_steps(workdir)
    assert max(complete) > stopped[0]
    # a half-written save from a crash, at a later step: must be ignored
    os.makedirs(os.path.join(workdir, "checkpoints", f"{STEPS - 1}.orbax-checkpoint-tmp-1234", "params"))

    # 3. The next run resumes from the last complete checkpoint and finishes.
    log3 = str(tmp_path / "run3.log")
    proc = train_helpers.popen(train_helpers.train_command(workdir, data, *FLAGS, "--config.checkpoint.every=100000"),
                               env, log3)
    assert proc.wait(timeout=300) == 0, train_helpers.read_log(log3)[-3000:]
    assert f"Resumed from the checkpoint of step {max(complete)}" in train_helpers.read_log(log3)
    assert _complete_steps(workdir)[-1] == STEPS
    assert not any("tmp" in d for d in os.listdir(os.path.join(workdir, "checkpoints")))
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        assert json.load(f)["step"] == STEPS
    assert os.path.exists(os.path.join(workdir, "tokenizer", "config.json"))
