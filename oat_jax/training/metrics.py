"""Metric logging: one JSON object per line in `workdir/metrics.jsonl` plus TensorBoard event files.

Only process 0 writes; the others get a writer that does nothing, so callers need no `if`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np


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
        """Logs `scalars` (name -> number or 0-d array) at `step`; non-finite values are written as null/NaN."""
        if not self.enabled:
            return
        values = {k: _to_float(v) for k, v in scalars.items()}
        record = {"step": int(step)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        """Pushes buffered TensorBoard events to disk."""
        if self.enabled:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both files."""
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def read_metrics(workdir: str) -> list[dict]:
    """All records of `workdir/metrics.jsonl` in order (for tests, notebooks and plots)."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
