"""Closed-loop evaluation (oat_jax.eval): batched lock-step rollouts (toy environments), tables, the merge command
line, and Meta-World end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from oat_jax.eval import policy_eval, policy_report, rollouts
from oat_jax.policy.sampling import SamplingConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PointReach:
    """1-D point mass: obs = [position, goal]; action moves the point; success within 0.05 of the goal."""

    class _Space:
        shape = (1,)

    action_space = _Space()

    def __init__(self, goal: float, limit: int = 1000):
        self.goal, self.limit = goal, limit

    def reset(self):
        self.x, self.t = 0.0, 0
        return np.array([self.x, self.goal], np.float32), {}

    def step(self, action):
        self.x += 0.1 * float(action[0])
        self.t += 1
        success = abs(self.x - self.goal) < 0.05
        return np.array([self.x, self.goal], np.float32), 0.0, False, self.t >= self.limit, {"success": success}


def test_batched_rollouts_replan_every_n_action_steps_with_one_call_for_all_envs():
    envs = [PointReach(0.5), PointReach(-0.3), PointReach(5.0)]  # the last one cannot be reached in time
    seen = []

    def act(history):  # history (B, K, 2): a proportional controller on the newest frame, as a chunk of 8 steps
        seen.append(history.copy())
        direction = np.sign(history[:, -1, 1] - history[:, -1, 0])
        return np.repeat(direction[:, None, None], 8, axis=1).astype(np.float32), np.ones(len(history), bool)

    out = rollouts.run_batched_episodes(envs, act, n_obs_steps=2, n_action_steps=4, max_steps=30)
    assert out["success"].tolist() == [True, True, False]
    assert out["steps"].tolist() == [5, 3, 30]
    assert out["calls"] == 8 == len(seen)  # ceil(30 / 4) re-plans, each one batched call over all 3 envs
    assert all(h.shape == (3, 2, 2) for h in seen)
    # the first history repeats the first frame; later ones hold the previous and the current observation
    np.testing.assert_allclose(seen[0][:, 0], seen[0][:, 1])
    np.testing.assert_allclose(seen[1][2, :, 0], [0.3, 0.4], atol=1e-6)
    assert out["invalid_rate"] == 0.0


def test_invalid_chunks_hold_still():
    envs = [PointReach(0.5)]

    def act(history):
        return np.full((1, 8, 1), np.nan, np.float32), np.zeros(1, bool)

    out = rollouts.run_batched_episodes(envs, act, n_obs_steps=1, n_action_steps=8, max_steps=16)
    assert not out["success"][0] and envs[0].x == 0.0 and out["invalid_rate"] == 1.0


def _result(label, ks, base):
    return {"label": label, "tasks": ["a-v3", "b-v3"], "by_k": {str(k): {
        "per_task": {"a-v3": {"mean": base, "se": 0.01}, "b-v3": {"mean": base + 0.1, "se": 0.02}},
        "mean": base + 0.05, "se": 0.01, "latency_ms_b1": 3.0 * k, "latency_ms_batch": 5.0 * k,
        "invalid_rate": 0.0, "mean_tokens": float(k)} for k in ks}}


def test_markdown_table_and_plot(tmp_path):
    results = [_result("OAT", [1, 2, 4, 8], 0.4), _result("Bin", [128], 0.2)]
    policy_report.write_outputs(results, str(tmp_path), "table")
    text = open(tmp_path / "table.md").read()
    assert "| OAT_8 | 40.0 ± 1.0 | 50.0 ± 2.0 | **45.0 ± 1.0**" in text and "| Bin |" in text
    assert os.path.getsize(tmp_path / "success_vs_k.png") > 1000
    assert len(json.load(open(tmp_path / "table.json"))) == 2
    assert policy_eval.mean_se([0.2, 0.4]) == pytest.approx((0.3, 0.1))
    # runs ordered (policy, evaluation seed): several policies (training seeds) -> one mean per policy
    assert policy_eval.group_means([0.1, 0.3, 0.5, 0.7], 2) == pytest.approx([0.2, 0.6])
    assert policy_eval.group_means([0.1, 0.3], 1) == [0.1, 0.3]


def test_merge_cli_writes_one_table_of_every_result_file(tmp_path):
    (tmp_path / "oat.json").write_text(json.dumps(_result("OAT", [1, 8], 0.4)))
    (tmp_path / "bin.json").write_text(json.dumps([_result("Bin", [128], 0.2)]))
    proc = subprocess.run([sys.executable, "-m", "experiments.eval_policy",
                           f"--merge={tmp_path / 'oat.json'},{tmp_path / 'bin.json'}", f"--output={tmp_path / 'out'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| OAT_8 |" in proc.stdout and "| Bin |" in (tmp_path / "out" / "table.md").read_text()
    assert [r["label"] for r in json.loads((tmp_path / "out" / "table.json").read_text())] == ["OAT", "Bin"]


def test_metaworld_evaluation_end_to_end(tmp_path):
    pytest.importorskip("metaworld")
    from policy_helpers import save_tiny_oat, tiny_policy
    policy = tiny_policy(save_tiny_oat(str(tmp_path / "tok")))
    policy.save(str(tmp_path / "run" / "policy"))
    res = policy_eval.evaluate([str(tmp_path / "run")], ["reach-v3"], episodes=2, seeds=[0], num_tokens=[1, 4],
                               max_steps=20, latency_repeats=2, log=lambda s: None)
    assert set(res["by_k"]) == {"1", "4"}
    for entry in res["by_k"].values():
        assert 0.0 <= entry["mean"] <= 1.0 and len(entry["per_task"]["reach-v3"]["per_run"]) == 1
        assert entry["latency_ms_b1"] > 0 and entry["mean_tokens"] in (1.0, 4.0)
    policy_report.write_outputs([res], str(tmp_path / "out"), "results")
    assert os.path.exists(tmp_path / "out" / "results.md")
    for entry in res["by_k"].values():
        entry["latency_ms_b1"] = entry["latency_ms_batch"] = -1.0
    policy_eval.remeasure_latency([res], repeats=2, log=lambda s: None)
    assert all(e["latency_ms_b1"] > 0 and e["latency_ms_batch"] > 0 for e in res["by_k"].values())
    # --paired: training seed i on evaluation seed i only; the mean and s.e. are over the workdirs
    run = str(tmp_path / "run")
    paired = policy_eval.evaluate([run, run], ["reach-v3"], episodes=1, seeds=[0, 1], num_tokens=[4], max_steps=10,
                                  latency_repeats=1, log=lambda s: None, paired=True)
    entry = paired["by_k"]["4"]
    assert paired["paired"] and entry["se_over"] == "training seeds" and len(entry["per_run"]) == 2
    with pytest.raises(ValueError, match="one evaluation seed per workdir"):
        policy_eval.evaluate([run, run], ["reach-v3"], episodes=1, seeds=[0], num_tokens=[4], max_steps=10,
                             paired=True)
    # --temperature / --top_k replace the saved sampling settings (the rest is kept) and are recorded in the results
    assert res["sampling"] == {"temperature": 1.0, "top_k": 10}
    greedy = policy_eval.evaluate([run], ["reach-v3"], episodes=1, seeds=[0], num_tokens=[4], max_steps=8,
                                  latency_repeats=1, log=lambda s: None, temperature=0.0)
    assert greedy["sampling"] == {"temperature": 0.0, "top_k": 10}
    import jax
    from oat_jax.policy import load_policy
    loaded = load_policy(run)
    assert policy_eval._with_sampling(loaded, run, None, 3).sampling == SamplingConfig(1.0, 3)
    assert policy_eval._with_sampling(loaded, run, None, None) is loaded
    obs = {"state": np.random.default_rng(0).normal(size=(3, policy.config.n_obs_steps, 39)).astype(np.float32)}
    sampled = [loaded.sample_tokens(obs, jax.random.PRNGKey(i))[0] for i in range(3)]
    greedy_policy = loaded.with_sampling(SamplingConfig(0.0, 10))
    argmax = [greedy_policy.sample_tokens(obs, jax.random.PRNGKey(i))[0] for i in range(3)]
    assert any((a != sampled[0]).any() for a in sampled[1:])  # the saved temperature 1 draws differ by key
    assert all((a == argmax[0]).all() for a in argmax[1:])  # greedy ignores the key


def test_metaworld_evaluation_of_a_diffusion_policy(tmp_path):
    """A diffusion policy runs through the same evaluation: one row keyed "0" (no tokens), latencies measured, and
    asking it for k tokens is an error naming the policy kind."""
    pytest.importorskip("metaworld")
    import jax

    from oat_jax.normalizer import Normalizer
    from oat_jax.policy.diffusion import DiffusionConfig, init_params
    from oat_jax.policy.diffusion_policy import DiffusionPolicy

    config = DiffusionConfig(action_dim=4, horizon=8, obs_dim=39, embed_dim=32, depth=1, num_heads=2,
                             state_hidden=32, num_inference_steps=2)
    rng = np.random.default_rng(0)
    policy = DiffusionPolicy(config, init_params(config, jax.random.PRNGKey(0)),
                             Normalizer.fit(rng.uniform(-1, 1, (64, 4)), "limits"),
                             {"state": Normalizer.fit(rng.normal(size=(64, 39)), "gaussian")}, n_action_steps=4)
    run = str(tmp_path / "dp_run")
    policy.save(os.path.join(run, "policy"))
    res = policy_eval.evaluate([run], ["reach-v3"], episodes=2, seeds=[0], num_tokens=[None], max_steps=12,
                               latency_repeats=2, log=lambda s: None)
    assert res["label"] == "dp" and set(res["by_k"]) == {"0"}
    entry = res["by_k"]["0"]
    assert 0.0 <= entry["mean"] <= 1.0 and entry["mean_tokens"] == 0.0 and entry["invalid_rate"] == 0.0
    assert entry["latency_ms_b1"] > 0
    policy_eval.remeasure_latency([res], repeats=2, log=lambda s: None)
    assert entry["latency_ms_batch"] > 0
    policy_report.write_outputs([res], str(tmp_path / "out"), "table")
    assert "| dp |" in (tmp_path / "out" / "table.md").read_text()
    with pytest.raises(ValueError, match="diffusion policy"):
        policy_eval.evaluate([run], ["reach-v3"], episodes=1, seeds=[0], num_tokens=[4], max_steps=4)
    with pytest.raises(ValueError, match="samples no tokens"):
        policy_eval.evaluate([run], ["reach-v3"], episodes=1, seeds=[0], num_tokens=[None], max_steps=4,
                             temperature=0.0)


def test_image_policy_evaluation_renders_the_camera(tmp_path):
    """A policy trained on camera images is evaluated with frames rendered offscreen (the command line runs in its
    own process: MuJoCo's renderer cannot share one with TensorFlow); without --camera it is a clear error."""
    pytest.importorskip("metaworld")
    import jax

    from oat_jax.normalizer import Normalizer
    from oat_jax.policy.diffusion import DiffusionConfig, init_params
    from oat_jax.policy.diffusion_policy import DiffusionPolicy

    config = DiffusionConfig(action_dim=4, horizon=8, obs_dim=39, num_cameras=1, image_shape=(24, 24, 3),
                             embed_dim=16, depth=1, num_heads=2, state_hidden=16, conv_channels=(8, 8, 8),
                             keypoints=4, num_inference_steps=2)
    rng = np.random.default_rng(0)
    DiffusionPolicy(config, init_params(config, jax.random.PRNGKey(0)),
                    Normalizer.fit(rng.uniform(-1, 1, (64, 4)), "limits"),
                    {"state": Normalizer.fit(rng.normal(size=(64, 39)), "gaussian")},
                    n_action_steps=4).save(str(tmp_path / "run" / "policy"))
    base = [sys.executable, "-m", "experiments.eval_policy", f"--workdir={tmp_path / 'run'}", "--tasks=reach-v3",
            "--episodes=2", "--seeds=0", "--max_steps=6", "--latency_repeats=1"]
    proc = subprocess.run(base + ["--camera=corner", f"--output={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    res = res[0] if isinstance(res, list) else res
    assert res["camera"] == "corner" and res["by_k"]["0"]["latency_ms_b1"] > 0
    proc = subprocess.run(base + [f"--output={tmp_path / 'out2'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "--camera" in proc.stderr


def test_a_language_conditioned_policy_is_evaluated_with_each_tasks_instruction(tmp_path, monkeypatch):
    """Trained on the embedded MT10 data with its instructions (streamed), the policy knows every MT10 task's
    instruction, and the Meta-World evaluation feeds each task's own one."""
    pytest.importorskip("metaworld")
    from data_pipelines.metaworld_experts import MT10_TASKS
    from experiments.configs import policy as policy_configs
    from oat_jax.eval.rollouts import task_instruction
    from oat_jax.policy import load_policy
    from oat_jax.policy.policy import TokenPolicy
    from oat_jax.training.policy.trainer import train_and_evaluate
    from policy_helpers import save_tiny_oat

    config = policy_configs.get_config("oat,test")
    config.tokenizer.path = save_tiny_oat(str(tmp_path / "tok"))
    config.data.update(language_key="language_instruction", shuffle_buffer=256)
    config.train.update(num_steps=2, eval_every=2)
    run = str(tmp_path / "run")
    train_and_evaluate(config, run)
    policy = load_policy(run)
    assert sorted(policy.instructions) == sorted(task_instruction(t) for t in MT10_TASKS)
    seen = []
    original = TokenPolicy.sample_tokens

    def recording(self, obs, rng, num_tokens=None, dataset=None):
        seen.append(np.asarray(obs["language"]).ravel().tolist())
        return original(self, obs, rng, num_tokens, dataset)

    monkeypatch.setattr(TokenPolicy, "sample_tokens", recording)
    res = policy_eval.evaluate([run], ["reach-v3", "drawer-open-v3"], episodes=1, seeds=[0], num_tokens=[4],
                               max_steps=4, latency_repeats=1, log=lambda s: None)
    assert 0.0 <= res["by_k"]["4"]["mean"] <= 1.0
    assert {"reach", "drawer open"} <= {s for call in seen for s in call}
    assert all(len(set(call)) == 1 for call in seen)  # one task per batched call, its own instruction
