r"""Benchmarks: tokenizer latency and throughput per prefix length, train step time and FLOP utilisation, data
pipeline throughput, peak host memory of each phase.

  python -m experiments.benchmark --out=bench.json                       # everything (~15 min on 2 CPU cores)
  python -m experiments.benchmark --quick --out=/tmp/bench.json          # tiny sizes, one repeat (smoke test)
  python -m experiments.benchmark --phases=matmul,tokenizer --config.tokenizer.dtypes='("float32",)'

Phases (`--phases`, comma-separated; default all, in this order):
  matmul       a jitted 2048^3 matmul per dtype: the machine's measured matmul peak FLOP/s;
  tokenizer    tokenize / detokenize latency (batch 1) and throughput (batches 256, 4096) for every prefix length k,
               for the paper model (D_a=7) and the Meta-World one (D_a=4), float32 and bfloat16: the pure jitted
               functions, and the validated Python API at batch 1 (its overhead is the difference);
  train        the paper model's train step (AdamW, clipping, EMA) at batch 64 and 256 on one device, with XLA's
               FLOP count of the step and the achieved FLOP/s;
  train_multi  the same step data-parallel over 8 devices (simulated CPU devices on a CPU host);
  data         chunks/s of the tf.data chunk pipeline over the embedded RLDS dataset, and of the training loop's
               in-memory batcher.
Every timing is taken after compilation and warm-up, blocking on the result, and reported as the median with
10th/90th percentiles over repeated runs. Each phase runs in a fresh Python process (`--isolate`, default) so its
peak resident memory (ru_maxrss) is its own; the train_multi process gets
XLA_FLAGS=--xla_force_host_platform_device_count=8. The table is printed and the full results written as JSON
(`--out`); `--markdown` also writes the tables as Markdown. Sizes and repeats: experiments/configs/benchmark.py.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from typing import Any

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from experiments import benchmark_phases
from experiments.benchmark_phases import PHASES
from experiments.configs import benchmark as benchmark_configs

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "benchmark.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Benchmark config file "
                                          "(experiments/configs/benchmark.py[:quick]).", lock_config=False)
_OUT = flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")
_MARKDOWN = flags.DEFINE_string("markdown", "", "Also write the tables as Markdown to this path ('' = no).")
_PHASES = flags.DEFINE_list("phases", list(PHASES), f"Phases to run, in order; any of {', '.join(PHASES)}.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny model and sizes, one repeat (a smoke test of the benchmark).")
_ISOLATE = flags.DEFINE_bool("isolate", True, "Run each phase in its own Python process (per-phase peak memory; "
                             "train_multi needs it on a CPU host unless XLA_FLAGS already asks for the devices).")

# The targets on a 2-core x86 CPU: (name, phase, unit, limit, 'max' | 'min', PyTorch reference figure).
TARGETS = (
    ("detokenize, batch 1, paper fp32, slowest k", "tokenizer", "ms", 2.0, "max", "4.0-4.4 ms"),
    ("tokenize, batch 1, paper fp32", "tokenizer", "ms", 1.2, "max", "1.8-2.4 ms"),
    ("train step, batch 64, paper fp32", "train", "s", 0.5, "max", "0.62-0.66 s"),
    ("data pipeline (tf.data)", "data", "chunks/s", 20000.0, "min", ""),
)
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")


# ----- machine description -----
def cpu_info() -> dict[str, Any]:
    """CPU model, family/model numbers, SIMD features and core count from /proc/cpuinfo (Linux) or `platform`."""
    info: dict[str, Any] = {"cpu_model": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return info
    fields = dict(re.findall(r"^(model name|vendor_id|cpu family|model|stepping|flags)\s*:\s*(.*)$",
                             text.split("\n\n")[0], re.M))
    info["cpu_model"] = fields.get("model name", info["cpu_model"])
    info["cpu_id"] = (f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} model "
                      f"{fields.get('model', '?')} stepping {fields.get('stepping', '?')}")
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_tile")
    info["simd"] = [f for f in fields.get("flags", "").split() if f in wanted]
    return info


def machine_info() -> dict[str, Any]:
    """Host description: CPU, memory, Python, load average and XLA_FLAGS at the start of the run."""
    info = cpu_info()
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info.update(python=platform.python_version(), xla_flags=os.environ.get("XLA_FLAGS", ""),
                load_avg_start=_load_avg())
    return info


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----- running the phases -----
def phase_env(phase: str, config: ml_collections.ConfigDict) -> dict[str, str]:
    """Environment of a phase's subprocess: XLA_FLAGS without a device-count flag, except for train_multi which
    gets `config.train.multi_devices` simulated host devices."""
    env = dict(os.environ)
    xla_flags = _DEVICE_COUNT_FLAG.sub("", env.get("XLA_FLAGS", "")).split()
    if phase == "train_multi":
        xla_flags.append(f"--xla_force_host_platform_device_count={int(config.train.multi_devices)}")
    env["XLA_FLAGS"] = " ".join(xla_flags)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run_subprocess(phase: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="oat_bench_") as tmp:
        config_path, out_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "out.json")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(config.to_json())
        proc = subprocess.run([sys.executable, "-m", "experiments.benchmark_phases", phase, config_path, out_path],
                              cwd=root, env=phase_env(phase, config), capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": f"phase {phase!r} failed (exit {proc.returncode}): {proc.stderr.strip()[-3000:]}"}
        with open(out_path, encoding="utf-8") as f:
            return json.load(f)


def _memory(result: dict[str, Any], isolated: bool) -> dict[str, Any]:
    before, after = result.pop("max_rss_before_mib"), result.pop("max_rss_after_mib")
    return {"peak_rss_mib": round(after, 1), "rss_before_phase_mib": round(before, 1),
            "phase_increase_mib": round(after - before, 1),
            "scope": "own process (imports included)" if isolated else "shared process: only increases show"}


def run_benchmark(config: ml_collections.ConfigDict, phases: list[str], isolate: bool = True,
                  log=print) -> dict[str, Any]:
    """Runs `phases` and returns the report (JSON-able).

    Args:
      config: see experiments/configs/benchmark.py.
      phases: names from `PHASES`, run in the given order.
      isolate: run each phase in a fresh subprocess (True) or in this process.
      log: called with a line of progress per phase.
    Returns:
      {"machine", "config", "started", "phases": {name: {"results": [...], "device", "wall_s", "memory"} or
      {"error": str}}, "load_avg_end", "targets": [...]}; tokenizer rows get `fraction_of_matmul_peak` when the
      matmul phase ran.
    """
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"Unknown benchmark phase(s) {unknown}; choose from {', '.join(PHASES)}.")
    report: dict[str, Any] = {"machine": machine_info(), "config": config.to_dict(),
                              "started": datetime.datetime.now().isoformat(timespec="seconds"), "phases": {}}
    for phase in phases:
        log(f"[benchmark] phase {phase} ...")
        if isolate:
            result = _run_subprocess(phase, config)
        else:
            try:
                result = benchmark_phases.run_phase(phase, config)
            except ValueError as e:
                result = {"error": f"phase {phase!r} failed: {e}"}
        if "error" not in result:
            result["memory"] = _memory(result, isolate)
            log(f"[benchmark] phase {phase}: {result['wall_s']:.1f} s, peak RSS "
                f"{result['memory']['peak_rss_mib']:.0f} MiB")
        else:
            log(f"[benchmark] {result['error']}")
        report["phases"][phase] = result
    report["machine"]["load_avg_end"] = _load_avg()
    _add_peak_fractions(report)
    report["targets"] = check_targets(report)
    return report


def _rows(report: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    return report["phases"].get(phase, {}).get("results", [])


def _add_peak_fractions(report: dict[str, Any]) -> None:
    """Achieved FLOP/s of each tokenizer / train row as a fraction of the measured matmul rate of its dtype."""
    peaks = {r["dtype"]: r["gflops_per_s"] for r in _rows(report, "matmul")}
    for phase in ("tokenizer", "train"):
        for row in _rows(report, phase):
            peak = peaks.get(row["dtype"])
            row["fraction_of_matmul_peak"] = (row["gflops_per_s"] / peak
                                              if peak and row.get("gflops_per_s") is not None else None)


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured figures (only for the paper sizes, i.e. no model overrides)."""
    if report["config"].get("model_overrides"):
        return []
    tok = [r for r in _rows(report, "tokenizer")
           if r["model"] == "paper" and r["dtype"] == "float32" and r["api"] == "jit" and r["batch"] == 1]
    det = [r["median_s"] * 1e3 for r in tok if r["op"] == "detokenize"]
    enc = [r["median_s"] * 1e3 for r in tok if r["op"] == "tokenize"]
    step = [r["median_s"] for r in _rows(report, "train") if r["dtype"] == "float32" and r["batch"] == 64]
    data = [r["items_per_s"] for r in _rows(report, "data") if r["pipeline"] == "tf.data"]
    measured = [max(det) if det else None, enc[0] if enc else None, step[0] if step else None,
                data[0] if data else None]
    out = []
    for (name, _, unit, limit, kind, reference), value in zip(TARGETS, measured):
        met = None if value is None else (value <= limit if kind == "max" else value >= limit)
        out.append({"name": name, "unit": unit, "target": f"{'<=' if kind == 'max' else '>='} {limit:g}",
                    "measured": value, "met": met, "pytorch_reference": reference})
    return out


# ----- formatting -----
def _ms(row: dict[str, Any]) -> str:
    return f"{row['median_s'] * 1e3:.3f} ({row['p10_s'] * 1e3:.3f}-{row['p90_s'] * 1e3:.3f})"


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables of strings."""
    m = report["machine"]
    device = next((p["device"] for p in report["phases"].values() if "device" in p), {})
    out = [("Machine", ["field", "value"], [
        ["CPU", f"{m.get('cpu_model')} ({m.get('cpu_id', '')}), {m.get('cpu_count')} cores"],
        ["SIMD", " ".join(m.get("simd", []))], ["JAX", f"{device.get('jax_version', '?')}, backend "
                                                       f"{device.get('backend', '?')} ({device.get('device_kind', '?')})"],
        ["load average (1/5/15 min) start / end", f"{m.get('load_avg_start')} / {m.get('load_avg_end')}"]])]
    if _rows(report, "matmul"):
        out.append(("Matmul peak (jitted n^3 matmul)", ["dtype", "n", "median ms (p10-p90)", "GFLOP/s"],
                    [[r["dtype"], str(r["n"]), _ms(r), _num(r["gflops_per_s"], ",.1f")]
                     for r in _rows(report, "matmul")]))
    if _rows(report, "tokenizer"):
        out.append(("Tokenizer (api=jit: pure jitted function; api=python: validated tok.tokenize/detokenize)",
                    ["model", "dtype", "op", "api", "batch", "k", "median ms (p10-p90)", "chunks/s", "GFLOP/chunk",
                     "GFLOP/s", "of matmul peak"],
                    [[r["model"], r["dtype"], r["op"], r["api"], str(r["batch"]), _num(r["k"], "d"), _ms(r),
                      _num(r["items_per_s"]), _num(None if r["flops"] is None else r["flops"] / r["batch"] / 1e9,
                                                   ".3f"),
                      _num(r["gflops_per_s"], ",.1f"), _pct(r.get("fraction_of_matmul_peak"))]
                     for r in _rows(report, "tokenizer")]))
    train = _rows(report, "train") + _rows(report, "train_multi")
    if train:
        out.append(("Train step (paper model, AdamW + clip + EMA; multi-device flops are per device)",
                    ["devices", "dtype", "batch", "median ms (p10-p90)", "chunks/s", "GFLOP/step", "GFLOP/s",
                     "of matmul peak"],
                    [[str(r["devices"]), r["dtype"], str(r["batch"]), _ms(r), _num(r["items_per_s"]),
                      _num(None if r["flops"] is None else r["flops"] / 1e9, ",.1f"), _num(r["gflops_per_s"], ",.1f"),
                      _pct(r.get("fraction_of_matmul_peak"))] for r in train]))
    if _rows(report, "data"):
        out.append(("Data pipeline (embedded Meta-World RLDS, H=32)",
                    ["pipeline", "batch", "ms/batch median (p10-p90)", "chunks/s"],
                    [[r["pipeline"], str(r["batch"]), _ms(r), _num(r["items_per_s"])]
                     for r in _rows(report, "data")]))
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _QUICK.value:
        benchmark_configs.apply_quick(config)
    report = run_benchmark(config, list(_PHASES.value), isolate=_ISOLATE.value)
    report["command"] = " ".join(["python -m experiments.benchmark"] + sys.argv[1:])
    print(format_text(report))
    with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {os.path.abspath(_OUT.value)}")
    if _MARKDOWN.value:
        with open(_MARKDOWN.value, "w", encoding="utf-8") as f:
            f.write(format_markdown(report))
    if any("error" in p for p in report["phases"].values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
