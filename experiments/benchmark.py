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
The library behind it: oat_jax/benchmarks/ (one phase alone: python -m oat_jax.benchmarks.phases).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments.configs import benchmark as benchmark_configs  # noqa: E402
from oat_jax.benchmarks import report as bench_report  # noqa: E402
from oat_jax.benchmarks.phases import PHASES  # noqa: E402
from oat_jax.benchmarks.runner import run_benchmark  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "benchmark.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Benchmark config file "
                                          "(experiments/configs/benchmark.py[:quick]).", lock_config=False)
_OUT = flags.DEFINE_string("out", "bench.json", "Where to write the JSON results.")
_MARKDOWN = flags.DEFINE_string("markdown", "", "Also write the tables as Markdown to this path ('' = no).")
_PHASES = flags.DEFINE_list("phases", list(PHASES), f"Phases to run, in order; any of {', '.join(PHASES)}.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny model and sizes, one repeat (a smoke test of the benchmark).")
_ISOLATE = flags.DEFINE_bool("isolate", True, "Run each phase in its own Python process (per-phase peak memory; "
                             "train_multi needs it on a CPU host unless XLA_FLAGS already asks for the devices).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _QUICK.value:
        benchmark_configs.apply_quick(config)
    report = run_benchmark(config, list(_PHASES.value), isolate=_ISOLATE.value)
    report["command"] = " ".join(["python -m experiments.benchmark"] + sys.argv[1:])
    print(bench_report.format_text(report))
    with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {os.path.abspath(_OUT.value)}")
    if _MARKDOWN.value:
        with open(_MARKDOWN.value, "w", encoding="utf-8") as f:
            f.write(bench_report.format_markdown(report))
    if any("error" in p for p in report["phases"].values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
