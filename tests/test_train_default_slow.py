"""Acceptance of the default config (minutes: marked slow): `python -m experiments.train` with the default and the
quest variant (the same model without nested dropout) on the embedded Meta-World dataset; held-out MSE at k = 8
<= 0.03, strictly decreasing over k in {1, 2, 4, 8}, no rise over k = 1..8 (each k at most 2 % above k - 1, also on
the unseen tasks), k = 8 within 1.25x of the unordered tokens', unseen-task k = 8 below 0.055, and a much worse
k = 1 error without nested dropout."""

import json
import os
import subprocess
import sys

import pytest

import train_helpers


def _train(workdir, variant=""):
    config = f"{train_helpers.REPO}/experiments/configs/oat.py{variant}"
    cmd = [sys.executable, "-m", "experiments.train", f"--config={config}", f"--workdir={workdir}"]
    env = train_helpers.subprocess_env(1)
    env["XLA_FLAGS"] = ""  # one CPU device, full optimisation: the configuration users run
    subprocess.run(cmd, cwd=train_helpers.REPO, env=env, check=True, timeout=1200)
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_default_and_unordered_acceptance(tmp_path):
    oat = _train(str(tmp_path / "oat"))
    mse = [oat[f"mse_norm/k{k}"] for k in (1, 2, 4, 8)]
    assert mse[-1] <= 0.03, mse
    assert all(a > b for a, b in zip(mse, mse[1:])), mse
    for prefix in ("", "metaworld_heldout/"):
        every_k = [oat[f"{prefix}mse_norm/k{k}"] for k in range(1, 9)]
        assert all(b <= 1.02 * a for a, b in zip(every_k, every_k[1:])), (prefix, every_k)
    assert oat["metaworld_heldout/mse_norm/k8"] < 0.055, oat["metaworld_heldout/mse_norm/k8"]
    unordered = _train(str(tmp_path / "quest"), ":quest")
    assert unordered["mse_norm/k1"] > 2.5 * oat["mse_norm/k1"], (unordered["mse_norm/k1"], oat["mse_norm/k1"])
    assert oat["mse_norm/k8"] <= 1.25 * unordered["mse_norm/k8"], (oat["mse_norm/k8"], unordered["mse_norm/k8"])
