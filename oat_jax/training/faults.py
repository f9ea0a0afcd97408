"""Fault handling: SIGTERM/SIGINT turn into a "save and stop" request; non-finite losses stop the run."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
    """Context manager catching SIGTERM and SIGINT: the first signal sets `requested`, the loop then saves a
    checkpoint and returns. A second SIGINT while stopping raises KeyboardInterrupt as usual.
    Handlers are only installed from the main thread; previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        logging.warning("Received %s: will save a checkpoint and stop after the current step.",
                        signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed_at(self, step: int, every: int) -> bool:
        """`agreed()` at every step with one process; with several (where it is a collective) only at every
        `every`-th step, False in between."""
        if jax.process_count() > 1 and step % int(every):
            return False
        return self.agreed()

    def agreed(self) -> bool:
        """True if any process was asked to stop (a collective when several processes run: call on all)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or Inf; no checkpoint of the diverged state is written."""


@jax.jit
def tree_all_finite(tree: Any) -> jax.Array:
    """bool scalar: every floating leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def close_quietly_on_error(close, what: str) -> None:
    """Calls `close()`; when an exception is already propagating (`sys.exc_info()`), a failure of `close` is logged
    as one warning instead of replacing that exception (e.g. a checkpoint that cannot be finalized on a full disk)."""
    import sys
    if sys.exc_info()[0] is None:
        close()
        return
    try:
        close()
    except Exception as e:  # noqa: BLE001  (the original error is the one to report)
        logging.warning("Closing the %s failed as well: %s", what, str(e).splitlines()[0] if str(e) else repr(e))


def disk_full(exc: BaseException) -> bool:
    """True if `exc` or an exception in its cause/context chain is a full disk (ENOSPC, or TensorStore's
    RESOURCE_EXHAUSTED write errors)."""
    import errno
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc) or "RESOURCE_EXHAUSTED: Error writing" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_SETUP_ERROR = "_oat_setup_error"


def mark_setup_error(error: BaseException) -> BaseException:
    """Tags an exception raised while a run was being set up from its config (before any training step): a
    config or data problem whose message says what to change, so the command line prints it as one line."""
    setattr(error, _SETUP_ERROR, True)
    return error


def is_setup_error(error: BaseException) -> bool:
    """True for an exception tagged by `mark_setup_error`."""
    return bool(getattr(error, _SETUP_ERROR, False))
