"""Wall-clock timing shared by every benchmark and latency measurement: a stopwatch, warm-up calls, repeated timed
calls capped by a time budget, and their summary (median, 10th/90th percentiles, minimum).

numpy and `time` only. Asynchronous calls (JAX dispatch) are timed to completion by passing
`block=jax.block_until_ready` (or any function that waits for a call's result).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np

Block = Callable[[Any], Any]


def _no_block(result: Any) -> Any:
    return result


class Stopwatch:
    """Seconds since construction (or the last `restart`), on `time.perf_counter`."""

    def __init__(self):
        self.start = time.perf_counter()

    def restart(self) -> None:
        """Starts counting again from now."""
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds (float) since the start."""
        return time.perf_counter() - self.start


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Seconds per run (n >= 1 floats) -> {"median_s", "p10_s", "p90_s", "min_s", "samples"} (percentiles
    interpolated; "samples" is n, an int)."""
    s = np.asarray(samples, np.float64)
    if s.size == 0:
        raise ValueError("summarize needs at least one timing sample.")
    return {"median_s": float(np.median(s)), "p10_s": float(np.percentile(s, 10)),
            "p90_s": float(np.percentile(s, 90)), "min_s": float(s.min()), "samples": int(s.size)}


def warm_up(run: Callable[[], Any], calls: int = 1, max_seconds: float = math.inf, block: Block = _no_block) -> None:
    """Calls `run` (waiting on each result with `block`) `calls` times (at least once), stopping early once
    `max_seconds` have passed."""
    clock = Stopwatch()
    for _ in range(max(int(calls), 1)):
        block(run())
        if clock.elapsed() > max_seconds:
            break


def time_calls(run: Callable[[], Any], repeats: int, max_seconds: float = math.inf, *, warmup: int = 0,
               block: Block = _no_block, min_samples: int = 3) -> dict[str, float]:
    """Wall time of single calls of `run()`, each until `block` returns on its result.

    Args:
      run: the call timed (no arguments).
      repeats: timed calls wanted (>= 1).
      max_seconds: time budget of the timed calls (and, separately, of the warm-up); once it is spent the timing
        stops as soon as min(min_samples, repeats) samples are taken.
      warmup: untimed calls first (`warm_up`), e.g. to compile.
      block: waits for a call's result (`jax.block_until_ready` for JAX functions).
      min_samples: samples kept even past the budget.
    Returns:
      `summarize`'s dict (seconds per call).
    """
    if warmup > 0:
        warm_up(run, warmup, max_seconds, block)
    repeats = max(int(repeats), 1)
    samples: list[float] = []
    budget = Stopwatch()
    while len(samples) < repeats:
        call = Stopwatch()
        block(run())
        samples.append(call.elapsed())
        if budget.elapsed() > max_seconds and len(samples) >= min(min_samples, repeats):
            break
    return summarize(samples)


def seconds_per_call(run: Callable[[], Any], calls: int, block: Block = _no_block) -> float:
    """Mean wall time (seconds) of `calls` back-to-back calls of `run()`, waiting (`block`) on the last result only:
    the throughput of a pipelined producer (an input pipeline, a stream of dispatched steps)."""
    calls = max(int(calls), 1)
    clock = Stopwatch()
    result = None
    for _ in range(calls):
        result = run()
    block(result)
    return clock.elapsed() / calls
