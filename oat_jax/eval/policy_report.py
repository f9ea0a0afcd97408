"""Reports of closed-loop evaluations (`policy_eval.evaluate`'s result dicts): table rows, the Markdown success /
latency table, the success-vs-k plot, reading result files back and writing every output."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np


def table_rows(results: Sequence[dict]) -> list[dict]:
    """One row per (policy, k): name, k, per-task mean/se, mean/se, latencies, invalid rate, mean tokens, tasks."""
    rows = []
    for res in results:
        multi = len(res["by_k"]) > 1
        for k, e in res["by_k"].items():
            rows.append({"name": f"{res['label']}_{k}" if multi else res["label"], "k": int(k), **e,
                         "tasks": res["tasks"]})
    return rows


def markdown_table(results: Sequence[dict]) -> str:
    """Markdown table of success rates (%, mean ± s.e.) per task and overall, with latency per policy call."""
    rows = table_rows(results)
    tasks = rows[0]["tasks"] if rows else []
    head = ["policy"] + [t.replace("-v3", "") for t in tasks] + ["mean ± s.e.", "latency b=1 (ms)",
                                                                 "latency/call (ms)", "tokens", "invalid"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"]] + [f"{100 * r['per_task'][t]['mean']:.1f} ± {100 * r['per_task'][t]['se']:.1f}"
                               for t in tasks]
        cells += [f"**{100 * r['mean']:.1f} ± {100 * r['se']:.1f}**", f"{r['latency_ms_b1']:.1f}",
                  f"{r['latency_ms_batch']:.1f}", f"{r['mean_tokens']:.1f}", f"{100 * r['invalid_rate']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_success_vs_k(results: Sequence[dict], path: str) -> None:
    """Success (mean ± s.e.) against k for policies evaluated at several k; others as horizontal bands (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    swept = [r for r in results if len(r["by_k"]) > 1]
    ks_all = sorted({int(k) for r in (swept or results) for k in r["by_k"] if int(k) > 0}) or [1]  # 0: DP
    colors = plt.get_cmap("tab10").colors
    for i, res in enumerate(results):
        color = colors[i % len(colors)]
        ks = sorted(int(k) for k in res["by_k"])
        means = np.array([100 * res["by_k"][str(k)]["mean"] for k in ks])
        ses = np.array([100 * res["by_k"][str(k)]["se"] for k in ks])
        if len(ks) > 1:
            ax.errorbar(ks, means, yerr=ses, marker="o", capsize=3, color=color, label=res["label"])
        else:
            mean_tokens = res["by_k"][str(ks[0])].get("mean_tokens", ks[0])
            tokens = f"{ks[0]}" if round(mean_tokens) == ks[0] else f"≤ {ks[0]}, {mean_tokens:.0f} on average"
            tokens = f"{tokens} tokens" if ks[0] else "no tokens"
            ax.axhline(means[0], linestyle="--", color=color, label=f"{res['label']} ({tokens})")
            ax.axhspan(means[0] - ses[0], means[0] + ses[0], color=color, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.set_xlabel("tokens generated (k)")
    ax.set_ylabel("success rate (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_results(paths: Sequence[str]) -> list[dict]:
    """Result dicts from results.json / table.json files (each holding one result or a list of them), in order."""
    results = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
        results.extend(loaded if isinstance(loaded, list) else [loaded])
    return results


def write_outputs(results: Sequence[dict], output: str, stem: str) -> None:
    """Writes <output>/<stem>.json (one result alone when stem is "results", else the list), <stem>.md
    (`markdown_table`) and success_vs_k.png (`plot_success_vs_k`)."""
    os.makedirs(output, exist_ok=True)
    payload = results[0] if len(results) == 1 and stem == "results" else list(results)
    with open(os.path.join(output, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(output, f"{stem}.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(results))
    plot_success_vs_k(results, os.path.join(output, "success_vs_k.png"))
