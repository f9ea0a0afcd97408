"""Performance targets of a benchmark report (2-core x86 CPU, paper sizes) and the achieved fraction of the
measured matmul peak."""

from __future__ import annotations

from typing import Any

# (name, phase, unit, limit, 'max' | 'min', PyTorch reference figure).
TARGETS = (
    ("detokenize, batch 1, paper fp32, slowest k", "tokenizer", "ms", 2.0, "max", "4.0-4.4 ms"),
    ("tokenize, batch 1, paper fp32", "tokenizer", "ms", 1.2, "max", "1.8-2.4 ms"),
    ("train step, batch 64, paper fp32", "train", "s", 0.5, "max", "0.62-0.66 s"),
    ("data pipeline (tf.data)", "data", "chunks/s", 20000.0, "min", ""),
)


def phase_rows(report: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    """The result rows of `phase` in `report` ([] when it did not run or failed)."""
    return report["phases"].get(phase, {}).get("results", [])


def add_peak_fractions(report: dict[str, Any]) -> None:
    """Sets `fraction_of_matmul_peak` of each tokenizer / train row (in place): its achieved FLOP/s over the
    measured matmul rate of its dtype (None without either)."""
    peaks = {r["dtype"]: r["gflops_per_s"] for r in phase_rows(report, "matmul")}
    for phase in ("tokenizer", "train"):
        for row in phase_rows(report, phase):
            peak = peaks.get(row["dtype"])
            row["fraction_of_matmul_peak"] = (row["gflops_per_s"] / peak
                                              if peak and row.get("gflops_per_s") is not None else None)


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """`TARGETS` with the measured figures: [{"name", "unit", "target", "measured", "met", "pytorch_reference"}]
    (met None when not measured); [] unless the paper sizes ran (no model overrides)."""
    if report["config"].get("model_overrides"):
        return []
    tok = [r for r in phase_rows(report, "tokenizer")
           if r["model"] == "paper" and r["dtype"] == "float32" and r["api"] == "jit" and r["batch"] == 1]
    det = [r["median_s"] * 1e3 for r in tok if r["op"] == "detokenize"]
    enc = [r["median_s"] * 1e3 for r in tok if r["op"] == "tokenize"]
    step = [r["median_s"] for r in phase_rows(report, "train") if r["dtype"] == "float32" and r["batch"] == 64]
    data = [r["items_per_s"] for r in phase_rows(report, "data") if r["pipeline"] == "tf.data"]
    measured = [max(det) if det else None, enc[0] if enc else None, step[0] if step else None,
                data[0] if data else None]
    out = []
    for (name, _, unit, limit, kind, reference), value in zip(TARGETS, measured):
        met = None if value is None else (value <= limit if kind == "max" else value >= limit)
        out.append({"name": name, "unit": unit, "target": f"{'<=' if kind == 'max' else '>='} {limit:g}",
                    "measured": value, "met": met, "pytorch_reference": reference})
    return out
