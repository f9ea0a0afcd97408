"""Tables of a benchmark report (`runner.run_benchmark`'s dict): machine, matmul peak, tokenizer, train step, data
pipeline, peak memory per phase and targets, as aligned plain text or Markdown."""

from __future__ import annotations

from typing import Any

from oat_jax.benchmarks.targets import phase_rows


def _ms(row: dict[str, Any]) -> str:
    return f"{row['median_s'] * 1e3:.3f} ({row['p10_s'] * 1e3:.3f}-{row['p90_s'] * 1e3:.3f})"


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables of strings, in display order."""
    m = report["machine"]
    device = next((p["device"] for p in report["phases"].values() if "device" in p), {})
    jax_line = (f"{device.get('jax_version', '?')}, backend {device.get('backend', '?')} "
                f"({device.get('device_kind', '?')})")
    out = [("Machine", ["field", "value"], [
        ["CPU", f"{m.get('cpu_model')} ({m.get('cpu_id', '')}), {m.get('cpu_count')} cores"],
        ["SIMD", " ".join(m.get("simd", []))], ["JAX", jax_line],
        ["load average (1/5/15 min) start / end", f"{m.get('load_avg_start')} / {m.get('load_avg_end')}"]])]
    if phase_rows(report, "matmul"):
        out.append(("Matmul peak (jitted n^3 matmul)", ["dtype", "n", "median ms (p10-p90)", "GFLOP/s"],
                    [[r["dtype"], str(r["n"]), _ms(r), _num(r["gflops_per_s"], ",.1f")]
                     for r in phase_rows(report, "matmul")]))
    if phase_rows(report, "tokenizer"):
        out.append(("Tokenizer (api=jit: pure jitted function; api=python: validated tok.tokenize/detokenize)",
                    ["model", "dtype", "op", "api", "batch", "k", "median ms (p10-p90)", "chunks/s", "GFLOP/chunk",
                     "GFLOP/s", "of matmul peak"],
                    [[r["model"], r["dtype"], r["op"], r["api"], str(r["batch"]), _num(r["k"], "d"), _ms(r),
                      _num(r["items_per_s"]), _num(None if r["flops"] is None else r["flops"] / r["batch"] / 1e9,
                                                   ".3f"),
                      _num(r["gflops_per_s"], ",.1f"), _pct(r.get("fraction_of_matmul_peak"))]
                     for r in phase_rows(report, "tokenizer")]))
    train = phase_rows(report, "train") + phase_rows(report, "train_multi")
    if train:
        out.append(("Train step (AdamW + clip + EMA; the oat.py config named; multi-device flops are per device)",
                    ["config", "devices", "dtype", "batch", "median ms (p10-p90)", "chunks/s", "GFLOP/step",
                     "GFLOP/s", "of matmul peak"],
                    [[r.get("config", "paper"), str(r["devices"]), r["dtype"], str(r["batch"]), _ms(r),
                      _num(r["items_per_s"]),
                      _num(None if r["flops"] is None else r["flops"] / 1e9, ",.1f"), _num(r["gflops_per_s"], ",.1f"),
                      _pct(r.get("fraction_of_matmul_peak"))] for r in train]))
    if phase_rows(report, "data"):
        out.append(("Data pipeline (host side, H=32)",
                    ["pipeline", "batch", "ms/batch median (p10-p90)", "chunks/s"],
                    [[r["pipeline"], str(r["batch"]), _ms(r), _num(r["items_per_s"])]
                     for r in phase_rows(report, "data")]))
    if phase_rows(report, "data") and train:
        t = max(train, key=lambda r: r["items_per_s"])  # the fastest-consuming train step measured
        out.append((f"Feed vs step: host chunks/s against the fastest step's ({t['devices']} device(s), "
                    f"{t['dtype']}, batch {t['batch']}: {_num(t['items_per_s'])} chunks/s)",
                    ["pipeline", "host chunks/s", "host / step", "training is bound by"],
                    [[d["pipeline"], _num(d["items_per_s"]), f"{d['items_per_s'] / t['items_per_s']:.2f}",
                      "the host (data)" if d["items_per_s"] < t["items_per_s"] else "the device (step)"]
                     for d in phase_rows(report, "data")]))
    phases = report["phases"]
    out.append(("Peak host memory per phase (ru_maxrss)", ["phase", "peak RSS MiB", "increase in phase MiB",
                                                          "wall s"],
                [[name, _num(p["memory"]["peak_rss_mib"]), _num(p["memory"]["phase_increase_mib"]),
                  _num(p["wall_s"], ".1f")] if "memory" in p else [name, "error", "-", "-"]
                 for name, p in phases.items()]))
    if report["targets"]:
        out.append(("Targets (2-core x86 CPU)", ["target", "limit", "measured", "met", "PyTorch reference"],
                    [[t["name"], f"{t['target']} {t['unit']}", _num(t["measured"], ",.3f"),
                      {True: "yes", False: "NO", None: "-"}[t["met"]], t["pytorch_reference"]]
                     for t in report["targets"]]))
    return out


def format_text(report: dict[str, Any]) -> str:
    """Plain-text tables (aligned columns) of the report."""
    blocks = []
    for title, header, rows in tables(report):
        widths = [max(len(x) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        blocks.append("\n".join([f"== {title}", line(header), line(["-" * w for w in widths])]
                                + [line(r) for r in rows]))
    errors = [p["error"] for p in report["phases"].values() if "error" in p]
    return "\n\n".join(blocks + [f"ERROR: {e}" for e in errors])


def format_markdown(report: dict[str, Any]) -> str:
    """Markdown tables of the report (for docs/BENCHMARKS.md)."""
    blocks = []
    for title, header, rows in tables(report):
        md = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        blocks.append("\n".join(md + ["| " + " | ".join(r) + " |" for r in rows]))
    return "\n\n".join(blocks) + "\n"
