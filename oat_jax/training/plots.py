"""End-of-run figures (matplotlib, Agg backend): rate-distortion curve and reconstructions per prefix length."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402


def plot_rate_distortion(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str,
                         trained_ks: Sequence[int] = (), title: str = "") -> None:
    """Saves MSE vs number of tokens k (log y), normalized and raw units, one line per evaluation set.

    Args:
      curves: label (e.g. 'held-out episodes', an unseen-task dataset) -> (normalized MSE, raw MSE) for
        k = 1..N (index 0 is k = 1).
      path: output PNG file.
      trained_ks: prefix lengths nested dropout trained on (filled markers; the others are hollow).
    """
    num_tokens = len(next(iter(curves.values()))[0])
    ks = np.arange(1, num_tokens + 1)
    trained = np.isin(ks, np.asarray(trained_ks, dtype=np.int64))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for i, unit in enumerate(("normalized", "raw")):
        ax = axes[i]
        for color, (label, values) in zip(plt.cm.tab10.colors, curves.items()):
            values = np.asarray(values[i])
            ax.plot(ks, values, "-", color=color, label=label)
            ax.plot(ks[trained], values[trained], "o", color=color)
            ax.plot(ks[~trained], values[~trained], "o", mfc="white", color=color)
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.set_xlabel("tokens kept k")
        ax.set_ylabel(f"MSE ({unit})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].plot([], [], "o", color="gray", label="trained prefix length")
    axes[0].plot([], [], "o", mfc="white", color="gray", label="other k")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Reconstruction error vs prefix length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reconstructions(truth: np.ndarray, decodes: Mapping[int, np.ndarray], path: str) -> None:
    """Saves a grid: one row per chunk, one column per action dimension; ground truth vs decodes for each k.

    Args:
      truth: (C, H, D_a) float, raw units.
      decodes: k -> (C, H, D_a) float decodes with the first k tokens, raw units.
      path: output PNG file.
    """
    truth = np.asarray(truth)
    num_chunks, horizon, dims = truth.shape
    fig, axes = plt.subplots(num_chunks, dims, figsize=(2.6 * dims, 2.0 * num_chunks), squeeze=False)
    t = np.arange(horizon)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(decodes), 1)))
    for c in range(num_chunks):
        for d in range(dims):
            ax = axes[c, d]
            ax.plot(t, truth[c, :, d], color="black", lw=2.0, label="ground truth")
            for color, (k, dec) in zip(colors, sorted(decodes.items())):
                ax.plot(t, np.asarray(dec)[c, :, d], color=color, lw=1.0, label=f"k={k}")
            if c == 0:
                ax.set_title(f"action dim {d}")
            ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
