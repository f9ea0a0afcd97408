r"""The accelerator check: what a GPU/TPU run must know, measured in one command (`scripts/accelerator_check.sh`).

  python -m experiments.accelerator_check --out=accelerator_check            # on a GPU/TPU: about 8 minutes
  python -m experiments.accelerator_check --quick --out=/tmp/check            # tiny sizes (a CPU: seconds)

1. The benchmark (experiments/benchmark.py): the matmul peak, tokenize / detokenize latency at batch 1 for every k
   and throughput at large batches, the paper model's train step in float32 and bfloat16 with its share of the
   matmul peak, and the host feed (chunks/s of the embedded data, of the in-memory batcher and of a generated RLDS
   dataset with a 224x224 JPEG camera in every step) against the fastest step: which one bounds training.
2. The `:scale` recipe's train step (experiments/configs/oat.py:scale) at its batch, then that recipe trained on the
   embedded data for --minutes (steps from the measured step time), with its throughput and held-out MSE per k.
Writes <out>/report.md and <out>/report.json. Without an accelerator (JAX's backend is the CPU) the check runs at
tiny sizes, as with --quick.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "accelerator_check", "Folder of report.md and report.json.")
_MINUTES = flags.DEFINE_float("minutes", 3.0, "Wall-clock budget of the :scale training run.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes (the default on a CPU).")

# The tiny sizes of a check on a CPU: the oat.py:runlocal model.
TINY_MODEL = dict(width=32, num_heads=2, enc_depth=1, dec_depth=1, horizon=8, num_tokens=4, levels=(4, 3, 3))


def _configs(quick: bool):
    """(benchmark config, the :scale benchmark config of its train step, the :scale training config)."""
    from experiments.configs import benchmark as benchmark_configs
    from experiments.configs import oat as oat_configs

    bench = benchmark_configs.get_config("quick" if quick else "")
    bench.train.dtypes = ("float32",) if quick else ("float32", "bfloat16")
    bench.train.batch_sizes = (8,) if quick else (256,)
    scale = oat_configs.get_config("scale")
    if quick:
        scale.model.update(dtype="float32", **TINY_MODEL)
        scale.train.update(batch_size=16, log_every=5)
        scale.optim.warmup_steps = 5
    step = benchmark_configs.get_config("quick" if quick else "")
    step.train.update(config="scale", dtypes=(scale.model.dtype,), batch_sizes=(int(scale.train.batch_size),))
    step.training = scale
    step.model_overrides = {}
    return bench, step, scale


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax

    from oat_jax.benchmarks import accelerator, targets
    from oat_jax.benchmarks.runner import run_benchmark
    from oat_jax.training.tokenizer import trainer

    quick = _QUICK.value or jax.default_backend() == "cpu"
    bench_cfg, step_cfg, scale = _configs(quick)
    # Each phase in its own process (its peak memory is its own); tiny sizes run in this one.
    bench = run_benchmark(bench_cfg, ["matmul", "tokenizer", "train", "data"], isolate=not quick)
    scale_step = run_benchmark(step_cfg, ["train"], isolate=not quick)["phases"].get("train", {})
    bench["phases"].setdefault("train", {"results": []}).setdefault("results", []).extend(
        scale_step.get("results", []))
    targets.add_peak_fractions(bench)  # the recipe's step against the same matmul peak
    seconds = 60.0 * _MINUTES.value if not quick else 5.0
    step_s = accelerator.step_seconds(bench, "scale", scale.model.dtype, int(scale.train.batch_size))
    steps = accelerator.steps_for(seconds, step_s)
    print(f"[accelerator_check] training oat.py:scale for {steps} steps (~{seconds:.0f} s)", flush=True)
    run = accelerator.train_for(scale, os.path.join(_OUT.value, "scale_run"), steps, trainer.train_and_evaluate)
    run["label"] = "oat.py:scale" + (" (tiny sizes)" if quick else "")
    command = " ".join(["python -m experiments.accelerator_check"] + sys.argv[1:])
    path = accelerator.write(_OUT.value, bench, run, int(scale.model.num_tokens), command)
    print(f"[accelerator_check] wrote {os.path.abspath(path)}")
    if any("error" in p for p in bench["phases"].values()) or "error" in scale_step:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
