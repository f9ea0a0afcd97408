"""Progress bar (tqdm) showing the step, the training loss and steps/s; a no-op when disabled."""

from __future__ import annotations

import logging


class Progress:
    """Context manager around a tqdm bar over `total` steps starting at `initial`.

    Args:
      total: number of steps of the run.
      initial: first step (non-zero when resuming).
      enabled: False on processes other than 0 or when config.train.progress_bar is off (messages then go to
        the log).
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.enabled = enabled
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
