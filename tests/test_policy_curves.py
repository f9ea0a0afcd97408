"""The comparison's training-curve summary: seed averaging, nats per chunk, plot, and a clear error without runs."""

import json
import os
import subprocess
import sys

import pytest

from oat_jax.eval import policy_curves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(root, name, seed, losses, mean_length, max_length, vocab, variable_length=False):
    work = root / f"policy_{name}_s{seed}"
    (work / "policy").mkdir(parents=True)
    (work / "policy" / "policy.json").write_text(json.dumps({"config": {"variable_length": variable_length}}))
    with open(work / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 1, "train/loss": 9.0}) + "\n")
        for i, loss in enumerate(losses):
            f.write(json.dumps({"step": 100 * (i + 1), "eval/val_loss": loss, "eval/val_token_acc": 0.5,
                                "eval/val_acc_first": 0.25}) + "\n")
    final = {"val_loss": losses[-1], "val_token_acc": 0.5, "val_acc_first": 0.25,
             "token_stats": {"mean_length": mean_length, "max_length": max_length, "distinct_ids": 10.0,
                             "vocab_size": vocab, "entropy_pos0": 2.0}}
    (work / "final_metrics.json").write_text(json.dumps(final))
    return work


def test_summary_averages_seeds_and_counts_eos_for_variable_length(tmp_path):
    _run(tmp_path, "oat", 0, [2.0, 1.0], 8.0, 8.0, 1000)
    _run(tmp_path, "oat", 1, [2.0, 2.0], 8.0, 8.0, 1000)
    _run(tmp_path, "fast", 0, [3.0, 0.5], 9.0, 30.0, 1024, variable_length=True)
    (tmp_path / "policy_bin_s0").mkdir()  # unfinished: no final_metrics.json
    dp = _run(tmp_path, "dp", 0, [0.1, 0.08], 0.0, 0.0, 0)  # a diffusion policy: no token targets, left out
    (dp / "policy" / "policy.json").write_text(json.dumps({"type": "diffusion", "config": {}}))
    by_type = policy_curves.load_runs(str(tmp_path))
    assert sorted(by_type) == ["fast", "oat"] and len(by_type["oat"]) == 2
    steps, values = by_type["oat"][0]["curve"]["eval/val_loss"]
    assert list(steps) == [100, 200] and list(values) == [2.0, 1.0]
    rows = {r["type"]: r for r in policy_curves.summary_rows(by_type)}
    assert rows["oat"]["val_loss"] == pytest.approx(1.5) and rows["oat"]["nats_per_chunk"] == pytest.approx(12.0)
    assert rows["fast"]["nats_per_chunk"] == pytest.approx(0.5 * (9.0 + 1.0))  # + EOS
    proc = subprocess.run([sys.executable, "-m", "experiments.recipes.policy_curves", f"--runs={tmp_path}",
                           f"--output={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.getsize(tmp_path / "out" / "policy_curves.png") > 1000
    assert "| oat | 2 | 8.0 (8) | 1.500 | 12.0 |" in (tmp_path / "out" / "policy_training.md").read_text()


def test_no_finished_runs_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="metaworld_policy_comparison.sh"):
        policy_curves.load_runs(str(tmp_path))
