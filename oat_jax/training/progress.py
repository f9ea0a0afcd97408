"""Progress bar (tqdm) showing the step, the training loss and steps/s, on a terminal or in a notebook; elsewhere
(a log file, a batch job, a test) its messages go to the log instead."""

from __future__ import annotations

import logging
import sys


def interactive() -> bool:
    """True when stderr is a terminal or the code runs in a Jupyter kernel: where a progress bar is readable."""
    return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


class Progress:
    """Context manager around a tqdm bar over `total` steps starting at `initial`.

    Args:
      total: number of steps of the run.
      initial: first step (non-zero when resuming).
      enabled: False on processes other than 0; None = `interactive()` (messages go to the log without a bar).
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None):
        self.enabled = enabled = interactive() if enabled is None else enabled
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)

    def update(self, step: int, **postfix: float) -> None:
        """Moves the bar to `step` and shows `postfix` (e.g. loss=..., steps_per_sec=...)."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write(self, message: str) -> None:
        """Prints a line above the bar (or logs it when the bar is off)."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            logging.info(message)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


class _LibraryInfoFilter(logging.Filter):
    """Drops INFO (and lower) records emitted from inside noisy libraries (Orbax, TFDS, JAX)."""

    NOISY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/etils/")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(s in record.pathname for s in self.NOISY)


def quiet_library_logs() -> None:
    """Keeps the command line readable: library INFO logs are dropped, the training loop's own are kept."""
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_LibraryInfoFilter())
