"""The accelerator check (`scripts/accelerator_check.sh`, `python -m experiments.accelerator_check`): the benchmark
phases a GPU/TPU run must know (matmul peak, tokenizer latency and throughput per k, the train step of the paper
model and of the `:scale` recipe with its MFU, the host feed in chunks/s), then the `:scale` recipe trained for a
fixed time, in one Markdown report and one JSON file.

The training run's length comes from the benchmark's own measurement of its step: `steps_for(seconds, ...)`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import ml_collections

from oat_jax import timing
from oat_jax.benchmarks import report as bench_report
from oat_jax.benchmarks.targets import phase_rows


def steps_for(seconds: float, step_seconds: float | None, minimum: int = 20, share: float = 0.8) -> int:
    """Training steps that fill `share` of `seconds` at `step_seconds` per step (the rest goes to compilation and
    evaluation); `minimum` when the step time is unknown or the budget is smaller."""
    if not step_seconds or step_seconds <= 0:
        return minimum
    return max(minimum, int(seconds * share / step_seconds))


def step_seconds(bench: dict[str, Any], config: str, dtype: str, batch: int) -> float | None:
    """Median seconds of the benchmark's one-device train step of the oat.py variant `config` at `dtype` and
    `batch` (None: not measured)."""
    rows = [r for r in phase_rows(bench, "train")
            if r.get("config") == config and r["dtype"] == dtype and r["batch"] == batch]
    return rows[0]["median_s"] if rows else None


def train_for(config: ml_collections.ConfigDict, workdir: str, steps: int,
              train: Callable[[ml_collections.ConfigDict, str], dict[str, float]]) -> dict[str, Any]:
    """Trains `config` for `steps` steps in `workdir` with `train(config, workdir)` (a trainer's
    `train_and_evaluate`); returns {"steps", "batch", "wall_s", "chunks_per_s", "metrics"} (wall time includes
    compilation and the evaluations)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.train.num_steps = int(steps)
    config.train.eval_every = int(steps)
    config.checkpoint.every = int(steps)
    clock = timing.Stopwatch()
    metrics = train(config, workdir)
    wall = clock.elapsed()
    batch = int(config.train.batch_size)
    return {"steps": int(steps), "batch": batch, "wall_s": wall, "chunks_per_s": steps * batch / wall,
            "metrics": metrics}


def scale_table(run: dict[str, Any], num_tokens: int) -> tuple[str, list[str], list[list[str]]]:
    """The training run as a (title, header, rows) table: throughput and held-out MSE per k (and per k on every
    extra evaluation dataset)."""
    m = run["metrics"]
    labels = [""] + sorted({k.split("/mse_norm/")[0] + "/" for k in m if "/mse_norm/k" in k})
    header = ["held-out set"] + [f"k = {k}" for k in range(1, num_tokens + 1)]
    rows = [[(label.rstrip("/") or "held-out episodes")] +
            [f"{m[f'{label}mse_norm/k{k}']:.4f}" if f"{label}mse_norm/k{k}" in m else "-"
             for k in range(1, num_tokens + 1)] for label in labels]
    title = (f"{run['label']}: {run['steps']} steps at batch {run['batch']} in {run['wall_s']:.0f} s "
             f"(compilation and evaluation included): {run['chunks_per_s']:,.0f} chunks/s; held-out MSE "
             f"(normalized) of the EMA params per prefix length")
    return title, header, rows


def markdown(bench: dict[str, Any], run: dict[str, Any], num_tokens: int, command: str) -> str:
    """The check's report: how it was run, the benchmark's tables and the training run's table."""
    device = next((p["device"] for p in bench["phases"].values() if "device" in p), {})
    head = [f"# Accelerator check ({bench['started']})", "",
            f"`{command}` on {device.get('device_kind', '?')} ({device.get('backend', '?')}, "
            f"{device.get('device_count', '?')} device(s), jax {device.get('jax_version', '?')}).", ""]
    title, header, rows = scale_table(run, num_tokens)
    table = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(head) + "\n" + bench_report.format_markdown(bench) + "\n" + "\n".join(table) + "\n"


def write(out_dir: str, bench: dict[str, Any], run: dict[str, Any], num_tokens: int, command: str) -> str:
    """Writes `out_dir`/report.md and report.json; returns the Markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"command": command, "benchmark": bench, "training": run}, f, indent=1)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(bench, run, num_tokens, command))
    return path
