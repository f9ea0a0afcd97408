"""Metric logging: one JSON object per line in `workdir/metrics.jsonl` plus TensorBoard event files.

Only process 0 writes; the others get a writer that does nothing, so callers need no `if`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from typing import Any, Mapping

import numpy as np


class MetricWriteError(OSError):
    """Metrics could not be written (disk full, directory gone): the run stops instead of hanging."""


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Writes scalar metrics to JSONL and TensorBoard.

    Args:
      workdir: run directory; `metrics.jsonl` and the TensorBoard events (`tb/`) go there.
      enabled: False on processes other than 0 (then every call is a no-op).
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(self.path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # heavy import, only where written
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Logs `scalars` (name -> number or 0-d array) at `step`; non-finite values are written as null/NaN.

        Raises MetricWriteError (an OSError) when either file cannot be written (e.g. the disk is full), instead of
        blocking: TensorBoard events go through a background thread, which is checked before each write."""
        if not self.enabled:
            return
        values = {k: _to_float(v) for k, v in scalars.items()}
        record = {"step": int(step)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as e:
            raise MetricWriteError(e.errno, f"cannot write {self.path} ({e.strerror}); free disk space or choose "
                                            f"another --workdir, then rerun to resume") from e
        self._check_tensorboard()
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))

    def _check_tensorboard(self) -> None:
        """Raises MetricWriteError if the TensorBoard writer thread has died (its queue would block forever)."""
        worker = getattr(getattr(getattr(self._tb, "file_writer", None), "event_writer", None), "_worker", None)
        if worker is not None and not worker.is_alive():
            try:  # the thread's own error is not visible here: name a full disk when that is what happened
                full = shutil.disk_usage(self._tb.logdir).free < (1 << 20)
            except OSError:
                full = False
            code, why = (errno.ENOSPC, "No space left on device") if full else (errno.EIO, "a write failed")
            raise MetricWriteError(code, f"the TensorBoard writer of {self._tb.logdir} stopped ({why}); free disk "
                                         f"space or check the directory, then rerun to resume")

    def flush(self) -> None:
        """Pushes buffered TensorBoard events to disk (MetricWriteError if the TensorBoard writer has died)."""
        if self.enabled:
            self._check_tensorboard()
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both files."""
        if self.enabled:
            self.enabled = False
            try:
                self._check_tensorboard()
                self._tb.close()
            except MetricWriteError:  # its thread is gone: closing would wait on it forever; events are lost
                pass
            finally:
                self._jsonl.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of `workdir/metrics.jsonl` in order (for tests, notebooks and plots)."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
