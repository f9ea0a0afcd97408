"""Smoke tests of the benchmark library (oat_jax.benchmarks) and of `python -m experiments.benchmark` (tiny sizes, one
repeat; no timing assertions)."""

import json
import os
import subprocess
import sys

import pytest

from experiments.configs import benchmark as benchmark_configs
from oat_jax.benchmarks import report as bench_report, runner, targets as bench_targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_FIELDS = ("median_s", "p10_s", "p90_s", "min_s", "samples")


def _check_timing(row):
    for field in TIMING_FIELDS:
        assert field in row, (field, row)
    assert 0 < row["min_s"] <= row["p10_s"] <= row["median_s"] <= row["p90_s"]
    assert row["samples"] >= 1


def test_phase_env_sets_device_count_only_for_train_multi(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8")
    config = benchmark_configs.get_config("quick")
    config.train.multi_devices = 4
    single = runner.phase_env("tokenizer", config)["XLA_FLAGS"].split()
    multi = runner.phase_env("train_multi", config)["XLA_FLAGS"].split()
    assert single == ["--xla_cpu_enable_fast_math=false"]
    assert multi == ["--xla_cpu_enable_fast_math=false", "--xla_force_host_platform_device_count=4"]


def test_check_targets_compares_against_the_limits():
    def tok(op, k, ms):
        return {"model": "paper", "dtype": "float32", "api": "jit", "batch": 1, "op": op, "k": k,
                "median_s": ms / 1e3}
    report = {"config": {"model_overrides": {}}, "phases": {
        "tokenizer": {"results": [tok("tokenize", None, 1.0), tok("detokenize", 1, 1.5), tok("detokenize", 8, 2.5)]},
        "train": {"results": [{"dtype": "float32", "batch": 64, "median_s": 0.4}]},
        "data": {"results": [{"pipeline": "tf.data", "items_per_s": 15000.0}]}}}
    targets = {t["name"]: t for t in bench_targets.check_targets(report)}
    assert targets["detokenize, batch 1, paper fp32, slowest k"]["measured"] == pytest.approx(2.5)
    assert [t["met"] for t in targets.values()] == [False, True, True, False]
    report["config"]["model_overrides"] = {"enc_width": 32}  # not the paper's sizes: no targets
    assert bench_targets.check_targets(report) == []


def test_quick_cli_writes_json_table_and_markdown(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--quick", "--phases=matmul",
                           f"--out={out}", f"--markdown={md}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Matmul peak" in proc.stdout and "Peak host memory" in proc.stdout
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1
    assert report["command"].startswith("python -m experiments.benchmark")
    phase = report["phases"]["matmul"]
    assert phase["device"]["backend"] and phase["device"]["device_count"] == 1  # own process, no forced devices
    assert phase["memory"]["peak_rss_mib"] > 0 and phase["memory"]["phase_increase_mib"] >= 0
    (row,) = phase["results"]
    _check_timing(row)
    assert row["dtype"] == "float32" and row["flops"] == 2.0 * row["n"] ** 3 and row["gflops_per_s"] > 0
    assert "| dtype | n |" in md.read_text()


def test_inprocess_tokenizer_and_data_phases_report_every_setting():
    config = benchmark_configs.get_config("quick")
    report = runner.run_benchmark(config, ["tokenizer", "data"], isolate=False, log=lambda _: None)
    assert not [p["error"] for p in report["phases"].values() if "error" in p]

    rows = report["phases"]["tokenizer"]["results"]
    t = config.tokenizer
    settings = {(r["op"], r["api"], r["batch"], r["k"]) for r in rows}
    batches = [t.latency_batch, *t.throughput_batches]
    expected = {("tokenize", "jit", b, None) for b in batches}
    expected |= {("detokenize", "jit", b, k) for b in batches for k in t.prefix_lengths}
    expected |= {("tokenize", "python", t.latency_batch, None)}
    expected |= {("detokenize", "python", t.latency_batch, k) for k in t.prefix_lengths}
    assert settings == expected
    for r in rows:
        _check_timing(r)
        assert r["model"] == "metaworld" and r["items_per_s"] > 0
        assert (r["flops"] is not None and r["flops"] > 0) == (r["api"] == "jit")
    jit = {(r["op"], r["batch"]): r["flops"] for r in rows if r["api"] == "jit"}
    big = max(batches)
    assert jit[("tokenize", big)] == pytest.approx(big * jit[("tokenize", 1)], rel=0.05)  # FLOPs scale with B
    # detokenize: the input-independent first self-attention runs once per batch
    assert jit[("detokenize", 1)] < jit[("detokenize", big)] < big * jit[("detokenize", 1)]

    data, jpeg = report["phases"]["data"]["results"]
    for row in (data, jpeg):
        _check_timing(row)
        assert row["items_per_s"] > 0
    assert data["pipeline"] == "tf.data (embedded)"
    assert jpeg["pipeline"] == "tf.data (RLDS, 32x32 JPEG per step)" and jpeg["dataset_mib"] > 0
    for phase in report["phases"].values():
        assert phase["memory"]["peak_rss_mib"] > 0 and phase["wall_s"] > 0
    text = bench_report.format_text(report)
    assert "Tokenizer" in text and "Data pipeline" in text


def test_inprocess_train_multi_phase_counts_flops_on_every_device():
    config = benchmark_configs.get_config("quick")
    config.train.multi_devices = 2  # conftest gives 8 simulated CPU devices
    report = runner.run_benchmark(config, ["train_multi"], isolate=False, log=lambda _: None)
    (step,) = report["phases"]["train_multi"]["results"]
    _check_timing(step)
    assert step["devices"] == 2 and step["batch"] == 8 and step["loss_finite"]
    assert step["flops"] > 0 and step["model_flops"] == pytest.approx(2 * step["flops"])
    assert "Train step" in bench_report.format_text(report)


def test_failed_phase_is_reported_not_raised():
    config = benchmark_configs.get_config("quick")
    config.train.multi_devices = 4096
    report = runner.run_benchmark(config, ["train_multi"], isolate=False, log=lambda _: None)
    assert "4096 devices" in report["phases"]["train_multi"]["error"]
    assert "ERROR" in bench_report.format_text(report)
