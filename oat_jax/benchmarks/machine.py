"""Description of the machine a benchmark runs on: CPU model and SIMD features, memory, load average, the JAX
backend and devices, and the peak resident memory of this process."""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
from typing import Any

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info() -> dict[str, Any]:
    """CPU model, family/model numbers, SIMD features and core count from /proc/cpuinfo (Linux) or `platform`:
    {"cpu_model": str, "cpu_count": int, "cpu_id": str, "simd": [str]} (the last two on Linux only)."""
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
    info["simd"] = [f for f in fields.get("flags", "").split() if f in SIMD_FLAGS]
    return info


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Host description: `cpu_info` plus memory_gib, python, xla_flags and load_avg_start (at the start of the run)."""
    info = cpu_info()
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info.update(python=platform.python_version(), xla_flags=os.environ.get("XLA_FLAGS", ""),
                load_avg_start=load_avg())
    return info


def device_info() -> dict[str, Any]:
    """The JAX backend and devices this process computes on: {"backend", "device_kind", "device_count",
    "jax_version"}."""
    import jax
    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind, "device_count": len(devices),
            "jax_version": jax.__version__}


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)  # bytes on macOS, KiB on Linux
