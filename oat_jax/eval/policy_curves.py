"""Training curves and target statistics of the policies of one comparison run (the evidence next to the success
table): reading `<runs>/policy_<type>_s<seed>/` workdirs, seed-averaged summary rows, their Markdown table and the
curves plot.

Per-token CE is not comparable across token types (vocabularies and lengths differ); nats per chunk (CE x (mean
length, +1 for EOS)) is the negative log-likelihood of a whole held-out chunk, which is.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import defaultdict

import numpy as np

from oat_jax.artifacts import POLICY_FILE, WORKDIR_POLICY

EVAL_KEYS = ("eval/val_loss", "eval/val_token_acc", "eval/val_acc_first")
RUN_DIR = re.compile(r"policy_(?P<type>[a-z0-9]+)_s(?P<seed>\d+)$")


def load_runs(runs: str) -> dict[str, list[dict]]:
    """{token type: [{"seed", "curve": {key: (steps (n,), values (n,))}, "final": final_metrics dict,
    "variable_length": bool}]} for every finished run under the directory `runs`.

    A run counts once its final_metrics.json exists (written after the policy export); unfinished runs are skipped
    with a message. variable_length (the policy config's: EOS ends each target) comes from policy/policy.json.
    """
    by_type: dict[str, list[dict]] = defaultdict(list)
    for work in sorted(glob.glob(os.path.join(runs, "policy_*_s*"))):
        m = RUN_DIR.search(os.path.basename(work))
        final_path = os.path.join(work, "final_metrics.json")
        if not m or not os.path.exists(final_path):
            print(f"skipping {work}: no final_metrics.json (still training?)")
            continue
        with open(os.path.join(work, WORKDIR_POLICY, POLICY_FILE), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("type", "token") != "token":
            print(f"skipping {work}: a {meta['type']} policy has no token targets")
            continue
        points: dict[str, list[tuple[int, float]]] = defaultdict(list)
        with open(os.path.join(work, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for key in EVAL_KEYS:
                    if key in row:
                        points[key].append((int(row["step"]), float(row[key])))
        curve = {k: tuple(np.array(v).T) for k, v in points.items()}  # key -> (steps (n,), values (n,))
        with open(final_path, encoding="utf-8") as f:
            final = json.load(f)
        variable_length = bool(meta["config"]["variable_length"])
        by_type[m["type"]].append({"seed": int(m["seed"]), "curve": curve, "final": final,
                                   "variable_length": variable_length})
    if not by_type:
        raise FileNotFoundError(f"No finished policy runs (policy_<type>_s<seed>/final_metrics.json) under {runs}; "
                                f"run experiments/recipes/metaworld_policy_comparison.sh with RUNS={runs} first.")
    return dict(by_type)


def summary_rows(by_type: dict[str, list[dict]]) -> list[dict]:
    """One dict per token type with seed-averaged final metrics and target statistics."""
    rows = []
    for name, runs in by_type.items():
        fin = [r["final"] for r in runs]
        stats = [f["token_stats"] for f in fin]
        mean_len = float(np.mean([s["mean_length"] for s in stats]))
        variable = any(r["variable_length"] for r in runs)
        ce = float(np.mean([f["val_loss"] for f in fin]))
        rows.append({"type": name, "seeds": len(runs), "mean_length": mean_len,
                     "max_length": float(np.max([s["max_length"] for s in stats])),
                     "val_loss": ce, "nats_per_chunk": ce * (mean_len + (1.0 if variable else 0.0)),
                     "val_token_acc": float(np.mean([f["val_token_acc"] for f in fin])),
                     "val_acc_first": float(np.mean([f["val_acc_first"] for f in fin])),
                     "distinct_ids": float(np.mean([s["distinct_ids"] for s in stats])),
                     "vocab_size": float(stats[0]["vocab_size"]),
                     "entropy_pos0": float(np.mean([s["entropy_pos0"] for s in stats]))})
    return rows


def markdown(rows: list[dict]) -> str:
    """Markdown table of `summary_rows`."""
    head = ["tokens", "seeds", "tokens/chunk (max)", "held-out CE/token", "nats/chunk", "token acc",
            "first-token acc", "distinct ids / vocab", "entropy pos 0 (nats)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["type"], str(r["seeds"]), f"{r['mean_length']:.1f} ({r['max_length']:.0f})", f"{r['val_loss']:.3f}",
            f"{r['nats_per_chunk']:.1f}", f"{r['val_token_acc']:.3f}", f"{r['val_acc_first']:.3f}",
            f"{r['distinct_ids']:.0f} / {r['vocab_size']:.0f}", f"{r['entropy_pos0']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(by_type: dict[str, list[dict]], path: str) -> None:
    """Held-out CE / token accuracy / first-token accuracy vs step; mean over seeds, shaded min..max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    titles = {"eval/val_loss": "held-out CE per token (nats)", "eval/val_token_acc": "held-out token accuracy",
              "eval/val_acc_first": "held-out first-token accuracy"}
    fig, axes = plt.subplots(1, len(EVAL_KEYS), figsize=(4.2 * len(EVAL_KEYS), 3.3))
    for name, runs in by_type.items():
        for ax, key in zip(axes, EVAL_KEYS):
            curves = [r["curve"][key] for r in runs if key in r["curve"]]
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)  # seeds evaluated at the same steps; truncate to the shortest
            steps = curves[0][0][:n]
            values = np.stack([c[1][:n] for c in curves])  # (seeds, n)
            seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
            (line,) = ax.plot(steps, values.mean(0), marker="o", label=f"{name} ({seeds})")
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    for ax, key in zip(axes, EVAL_KEYS):
        ax.set_title(titles[key], fontsize=9)
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
