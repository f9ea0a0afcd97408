"""scripts/accelerator_check.sh on a CPU: the benchmark at tiny sizes, the :scale recipe's step and a short
training run, one Markdown report and one JSON file."""

import json
import math
import os
import subprocess

import train_helpers
from oat_jax.benchmarks import accelerator


def test_steps_follow_the_measured_step_time():
    assert accelerator.steps_for(180.0, 0.1) == 1440  # 80 % of the budget
    assert accelerator.steps_for(180.0, None) == 20 and accelerator.steps_for(1.0, 0.5) == 20
    bench = {"phases": {"train": {"results": [{"config": "paper", "dtype": "bfloat16", "batch": 256, "median_s": 0.2},
                                              {"config": "scale", "dtype": "bfloat16", "batch": 256,
                                               "median_s": 0.05}]}}}
    assert accelerator.step_seconds(bench, "scale", "bfloat16", 256) == 0.05
    assert accelerator.step_seconds(bench, "scale", "float32", 256) is None


def test_the_check_writes_its_report_on_a_cpu(tmp_path):
    out = tmp_path / "check"
    env = train_helpers.subprocess_env(num_devices=1)
    proc = subprocess.run(["bash", "scripts/accelerator_check.sh", str(out)], cwd=train_helpers.REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    report = (out / "report.md").read_text()
    for title in ("Matmul peak", "Tokenizer", "Train step", "Data pipeline", "Feed vs step", "oat.py:scale"):
        assert title in report, title
    assert "JPEG per step" in report  # the generated camera dataset was read
    data = json.loads((out / "report.json").read_text())
    configs = {r["config"] for r in data["benchmark"]["phases"]["train"]["results"]}
    assert configs == {"paper", "scale"}  # the paper model's step and the recipe's
    run = data["training"]
    assert run["steps"] >= 20 and run["chunks_per_s"] > 0
    curve = [run["metrics"][f"mse_norm/k{k}"] for k in range(1, 5)]
    assert all(math.isfinite(v) and v > 0 for v in curve)  # one MSE per prefix length
    assert os.path.isdir(out / "scale_run" / "tokenizer")  # the trained recipe loads like any tokenizer
