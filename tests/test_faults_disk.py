"""Fault injection, disk full: metric and checkpoint writes that fail with ENOSPC stop the run with a message within
seconds, never a hang."""

import errno
import os
import subprocess
import threading
import time

import pytest

import train_helpers
from oat_jax.training.metrics import MetricWriteError, MetricWriter
from train_helpers import tiny_dataset  # noqa: F401  (pytest fixture)


def _run_with_deadline(fn, seconds):
    """Runs fn in a thread; returns (finished, exception)."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001  (the test inspects it)
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("error")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_tensorboard_enospc_stops_metric_writes_instead_of_hanging(tmp_path):
    writer = MetricWriter(str(tmp_path))
    record_writer = writer._tb.file_writer.event_writer._ev_writer
    original = record_writer.write_event

    def full_disk(event):
        raise OSError(errno.ENOSPC, "No space left on device")

    record_writer.write_event = full_disk
    writer.write_scalars(0, {"loss": 1.0})  # the background thread dies on this event

    def keep_logging():
        for step in range(1, 200):  # far more than TensorBoard's queue holds
            writer.write_scalars(step, {"loss": 1.0, "lr": 0.1})
            time.sleep(0.01)

    start = time.time()
    finished, error = _run_with_deadline(keep_logging, 20)
    assert finished, "write_scalars blocked on a dead TensorBoard writer"
    assert isinstance(error, MetricWriteError) and "TensorBoard writer" in str(error) and str(tmp_path) in str(error)
    assert time.time() - start < 10
    finished, _ = _run_with_deadline(writer.close, 10)
    assert finished
    record_writer.write_event = original


def test_jsonl_enospc_names_the_file(tmp_path, monkeypatch):
    writer = MetricWriter(str(tmp_path))

    class FullFile:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    writer._jsonl = FullFile()
    with pytest.raises(MetricWriteError, match="No space left") as e:
        writer.write_scalars(1, {"loss": 1.0})
    assert os.path.join(str(tmp_path), "metrics.jsonl") in str(e.value)


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    return result.returncode == 0


def _fill(directory):
    """Writes a file until the filesystem is full."""
    with open(os.path.join(directory, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_run_whose_disk_fills_up_ends_with_a_message(tmp_path, tiny_dataset):  # noqa: F811
    disk = str(tmp_path / "disk")
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        workdir = os.path.join(disk, "run")
        log_path = str(tmp_path / "train.log")
        proc = train_helpers.popen(
            train_helpers.train_command(workdir, tiny_dataset, "--config.train.num_steps=100000",
                                        "--config.train.log_every=5", "--config.train.eval_every=50",
                                        "--config.checkpoint.every=20"),
            train_helpers.subprocess_env(), log_path)
        deadline = time.time() + 240
        while not os.path.isdir(os.path.join(workdir, "checkpoints", "20")) and time.time() < deadline:
            assert proc.poll() is None, train_helpers.read_log(log_path)[-3000:]
            time.sleep(0.5)
        _fill(disk)
        filled = time.time()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("training hung on a full disk:\n" + train_helpers.read_log(log_path)[-3000:])
        log = train_helpers.read_log(log_path)
        assert proc.returncode != 0 and time.time() - filled < 60
        assert "Training stopped: no space left on the disk of --workdir" in log, log[-3000:]
        line = next(x for x in log.splitlines() if "Training stopped: no space left" in x)
        assert workdir in line and "run the same command to resume" in line
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)
