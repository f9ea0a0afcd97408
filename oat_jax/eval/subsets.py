"""Deterministic evaluation subsets: the same rows on every run and every process."""

from __future__ import annotations

import numpy as np


def evenly_spaced(rows: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` rows of `rows` (M, ...), evenly spaced with the first and last kept; all M rows when
    limit <= 0 or M <= limit. Same dtype and trailing shape."""
    if 0 < limit < len(rows):
        return rows[np.linspace(0, len(rows) - 1, limit).round().astype(np.int64)]
    return rows
