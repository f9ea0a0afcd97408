"""Costs of timed programs: FLOPs of a compiled executable from XLA's cost analysis, and the throughput and FLOP/s
fields of a timing row."""

from __future__ import annotations


def flops_of(compiled) -> float | None:
    """FLOPs of one call of an AOT-compiled executable (`jax.jit(f).lower(...).compile()`) from XLA's cost analysis
    (None when unavailable or zero)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def rate_fields(stats: dict[str, float], flops: float | None, items: int) -> dict[str, float | None]:
    """Throughput of one timed setting: {"items_per_s": items per second at the median time (`stats` from
    `oat_jax.timing.summarize`), "flops": FLOPs per call or None, "gflops_per_s": achieved GFLOP/s or None}."""
    return {"items_per_s": items / stats["median_s"],
            "flops": flops, "gflops_per_s": None if flops is None else flops / stats["median_s"] / 1e9}
