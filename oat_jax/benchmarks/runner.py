"""Running benchmark phases, each in a fresh Python process (`python -m oat_jax.benchmarks.phases`) or in this one,
and assembling the report: machine description, per-phase results with peak memory, matmul-peak fractions and
targets."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable

import ml_collections

from oat_jax.benchmarks import machine, phases, targets

_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds oat_jax/


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


def run_subprocess(phase: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`phases.run_phase(phase, config)` in a fresh Python process (run from the directory holding oat_jax/, so
    the checkout's code and configs are used); {"error": str} when it fails."""
    with tempfile.TemporaryDirectory(prefix="oat_bench_") as tmp:
        config_path, out_path = os.path.join(tmp, "config.json"), os.path.join(tmp, "out.json")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(config.to_json())
        proc = subprocess.run([sys.executable, "-m", "oat_jax.benchmarks.phases", phase, config_path, out_path],
                              cwd=_SOURCE_ROOT, env=phase_env(phase, config), capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": f"phase {phase!r} failed (exit {proc.returncode}): {proc.stderr.strip()[-3000:]}"}
        with open(out_path, encoding="utf-8") as f:
            return json.load(f)


def _memory(result: dict[str, Any], isolated: bool) -> dict[str, Any]:
    before, after = result.pop("max_rss_before_mib"), result.pop("max_rss_after_mib")
    return {"peak_rss_mib": round(after, 1), "rss_before_phase_mib": round(before, 1),
            "phase_increase_mib": round(after - before, 1),
            "scope": "own process (imports included)" if isolated else "shared process: only increases show"}


def run_benchmark(config: ml_collections.ConfigDict, phase_names: list[str], isolate: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs `phase_names` and returns the report (JSON-able).

    Args:
      config: see experiments/configs/benchmark.py.
      phase_names: names from `phases.PHASES`, run in the given order.
      isolate: run each phase in a fresh subprocess (True) or in this process.
      log: called with a line of progress per phase.
    Returns:
      {"machine", "config", "started", "phases": {name: {"results": [...], "device", "wall_s", "memory"} or
      {"error": str}}, "targets": [...]}; machine gets "load_avg_end"; tokenizer and train rows get
      `fraction_of_matmul_peak` when the matmul phase ran.
    """
    unknown = [p for p in phase_names if p not in phases.PHASES]
    if unknown:
        raise ValueError(f"Unknown benchmark phase(s) {unknown}; choose from {', '.join(phases.PHASES)}.")
    report: dict[str, Any] = {"machine": machine.machine_info(), "config": config.to_dict(),
                              "started": datetime.datetime.now().isoformat(timespec="seconds"), "phases": {}}
    for phase in phase_names:
        log(f"[benchmark] phase {phase} ...")
        if isolate:
            result = run_subprocess(phase, config)
        else:
            try:
                result = phases.run_phase(phase, config)
            except ValueError as e:
                result = {"error": f"phase {phase!r} failed: {e}"}
        if "error" not in result:
            result["memory"] = _memory(result, isolate)
            log(f"[benchmark] phase {phase}: {result['wall_s']:.1f} s, peak RSS "
                f"{result['memory']['peak_rss_mib']:.0f} MiB")
        else:
            log(f"[benchmark] {result['error']}")
        report["phases"][phase] = result
    report["machine"]["load_avg_end"] = machine.load_avg()
    targets.add_peak_fractions(report)
    report["targets"] = targets.check_targets(report)
    return report
