"""Camera images through the policy pipeline: RLDS images -> aligned (state, image) histories -> one training step of
an image policy; Meta-World renders a camera into demonstrations and evaluation environments."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data_pipelines import rlds_writer
from experiments.configs import policy as policy_configs
from oat_jax.eval import rollouts
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel
from oat_jax.training.policy import data as policy_data
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy.step import init_policy_state, make_policy_train_step

EPISODE_LENS, SIZE, K = (7, 5, 9), 16, 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frames(episode: int, length: int, camera: int) -> np.ndarray:
    """(T, SIZE, SIZE, 3) uint8 whose channels hold (step index, episode index, camera index) at every pixel."""
    out = np.zeros((length, SIZE, SIZE, 3), np.uint8)
    out[..., 0] = np.arange(length, dtype=np.uint8)[:, None, None]
    out[..., 1], out[..., 2] = episode, camera
    return out


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory):
    """Three episodes with state[t] = (t, episode) and two cameras encoding (t, episode, camera) in their pixels."""
    episodes = []
    for e, length in enumerate(EPISODE_LENS):
        t = np.arange(length, dtype=np.float32)
        episodes.append(rlds_writer.Episode(
            source=f"image episode {e}", action=np.stack([t, np.full_like(t, e)], 1),
            observation={"state": np.stack([t, np.full_like(t, e)], 1), "image": _frames(e, length, 0),
                         "wrist": _frames(e, length, 1)}, language="", extras={}, metadata={}))
    return rlds_writer.write_rlds(episodes, os.path.join(str(tmp_path_factory.mktemp("img")), "img_rlds"),
                                  name="img_rlds")


def _data_cfg(path: str, image_keys) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(path=path, name="", action_keys="", source_split="train", val_fraction=0.0,
                                          split_seed=0, state_keys=("observation/state",), image_keys=image_keys,
                                          language_key="", max_eval_chunks=64))


def test_load_pairs_aligns_image_histories_with_states(image_dataset):
    cfg = _data_cfg(image_dataset, ("observation/wrist", "observation/image"))
    pairs = policy_data.load_pairs(cfg, "all", horizon=2, n_obs_steps=K)
    m = sum(EPISODE_LENS)
    assert pairs["state"].shape == (m, K, 2) and pairs["state"].dtype == np.float32
    assert pairs["image"].shape == (m, K, 2, SIZE, SIZE, 3) and pairs["image"].dtype == np.uint8
    assert set(pairs) == {"actions", "state", "image", "dataset_index"}  # cameras not kept under their own names
    image = pairs["image"]
    # every pixel of a frame carries its (step, episode): equal to the state frame of the same history slot
    for channel in (0, 1):
        expected = np.broadcast_to(pairs["state"][:, :, None, None, None, channel], image.shape[:-1])
        np.testing.assert_array_equal(image[..., channel], expected)
    np.testing.assert_array_equal(image[:, :, 0, 0, 0, 2], 1)  # camera axis in image_keys order: wrist first
    np.testing.assert_array_equal(image[:, :, 1, 0, 0, 2], 0)
    # the history: the first frame repeated at an episode start, then the K most recent steps
    steps = image[:, :, 0, 0, 0, 0].astype(int)
    first = [np.maximum(np.arange(n)[:, None] + np.arange(1 - K, 1)[None], 0) for n in EPISODE_LENS]
    np.testing.assert_array_equal(np.sort(steps, axis=0), np.sort(np.concatenate(first), axis=0))
    assert (steps[:, -1] == pairs["actions"][:, 0, 0]).all()  # the newest frame is the chunk's first step


def test_load_pairs_without_image_keys_is_unchanged(image_dataset):
    cfg = _data_cfg(image_dataset, ())
    pairs = policy_data.load_pairs(cfg, "all", horizon=2, n_obs_steps=K)
    assert set(pairs) == {"actions", "state", "dataset_index"}


def test_image_policy_trains_one_step_on_loaded_pairs(image_dataset):
    cfg = _data_cfg(image_dataset, ("observation/image",))
    pairs = policy_data.load_pairs(cfg, "all", horizon=2, n_obs_steps=2)
    config = PolicyConfig(vocab_size=12, max_tokens=4, obs_dim=2, n_obs_steps=2, num_cameras=1,
                          image_shape=(SIZE, SIZE, 3), conv_channels=(8, 8), keypoints=4, width=32, depth=1,
                          num_heads=2, state_hidden=16, dropout=0.0)
    model = TokenPolicyModel(config)
    optim = policy_configs.get_config("test").optim
    optim.lr, optim.warmup_steps, optim.min_lr_ratio = 3e-3, 1, 1.0
    tx, schedule = make_optimizer(optim, 2)
    state = init_policy_state(model, tx, 0)
    step = jax.jit(make_policy_train_step(model, tx, schedule, ml_collections.ConfigDict(
        {"power": 0.75, "max_decay": 0.999})))
    b = 8
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, 12, (b, 4)), jnp.int32), "lengths": jnp.full((b,), 4, jnp.int32),
             "state": jnp.asarray(pairs["state"][:b]), "image": jnp.asarray(pairs["image"][:b])}
    new_state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    keystr = jax.tree_util.keystr
    conv = [(keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(new_state.params)
            if "image_encoder" in keystr(p)]
    assert conv, "the image encoder has parameters"
    before = {keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params)}
    assert any(not np.allclose(before[name], x) for name, x in conv)  # the images get gradients


def test_executor_feeds_image_histories():
    calls = []

    def act(obs):
        calls.append(obs)
        return np.zeros((2, 4, 3), np.float32), np.ones(2, bool)

    ex = rollouts.ChunkExecutor(act, n_obs_steps=2, n_action_steps=2, action_dim=3)
    image = lambda v: np.full((2, 1, 4, 4, 3), v, np.uint8)  # noqa: E731  (B, cams, s, s, 3)
    ex.reset(np.zeros((2, 5), np.float32), image(1))
    ex.action(0)
    ex.observe(np.ones((2, 5), np.float32), np.array([True, False]), image(2))
    ex.action(2)
    assert set(calls[0]) == {"state", "image"} and calls[0]["image"].shape == (2, 2, 1, 4, 4, 3)
    np.testing.assert_array_equal(calls[0]["image"][:, :, 0, 0, 0, 0], [[1, 1], [1, 1]])
    np.testing.assert_array_equal(calls[1]["image"][:, :, 0, 0, 0, 0], [[1, 2], [1, 1]])  # masked env keeps its frames
    np.testing.assert_array_equal(calls[1]["state"][:, :, 0], [[0, 1], [0, 0]])


class _CountingEnv:
    """Gymnasium-like env whose state and camera frame both hold its step count; done after `length` steps."""

    def __init__(self, length: int):
        self.length, self.t = length, 0

    def reset(self):
        self.t = 0
        return np.array([0.0]), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)]), 0.0, False, self.t >= self.length, {"success": False}


def test_batched_episodes_feed_images_aligned_with_states():
    seen = []

    def act(obs):
        seen.append(obs)
        return np.zeros((2, 2, 1), np.float32), np.ones(2, bool)

    envs = [_CountingEnv(3), _CountingEnv(6)]
    out = rollouts.run_batched_episodes(envs, act, n_obs_steps=2, n_action_steps=2, max_steps=10,
                                        image_fn=lambda env: np.full((1, 2, 2, 3), env.t, np.uint8))
    assert list(out["steps"]) == [3, 6] and out["calls"] == 3
    for obs in seen:
        assert obs["image"].shape == (2, 2, 1, 2, 2, 3) and obs["image"].dtype == np.uint8
        np.testing.assert_array_equal(obs["image"][:, :, 0, 0, 0, 0], obs["state"][:, :, 0])
    np.testing.assert_array_equal(seen[-1]["state"][:, :, 0], [[1, 2], [3, 4]])  # env 0 ended: its history stays put


_RENDER = """
from oat_jax.eval import rollouts
env = rollouts.make_metaworld_envs("reach-v3", 1, seed=0, camera="corner", image_size=32)[0]
env.reset()
frame = rollouts.render_frames([env])  # (B, cams, s, s, 3)
env.close()
print(frame.shape, frame.dtype, float(frame.std()))
"""


def test_metaworld_renders_a_camera():
    pytest.importorskip("metaworld")
    # a fresh process: MuJoCo's EGL renderer crashes in a process that has loaded TensorFlow (as this one has)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", _RENDER], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    shape, dtype, std = result.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert shape == "(1, 1, 32, 32, 3)" and dtype == "uint8"
    assert float(std) > 1.0  # a rendered scene, not a blank buffer


@pytest.mark.slow  # about 70 s on 2 cores; tests/test_policy_streamed.py trains both kinds on cameras in CI
@pytest.mark.parametrize("variant", ["dp", "bin"])
def test_trainers_train_an_image_policy_that_acts_on_images(image_dataset, tmp_path, variant):
    """config.data.image_keys feeds the conv encoder through the trainer (diffusion and token policy alike); the
    saved policy records its cameras and acts on (state, image) histories."""
    from oat_jax.policy import load_policy
    from oat_jax.training.policy import diffusion_trainer
    from oat_jax.training.policy import trainer as policy_trainer

    config = policy_configs.get_config(f"{variant},test")
    config.data.path, config.data.image_keys = image_dataset, ("observation/image",)
    config.data.val_fraction = 0.34  # one of the three episodes held out
    config.train.num_steps, config.train.eval_every = 2, 2
    if variant == "bin":
        config.tokenizer.fit_options.num_bins = 8
    trainer = diffusion_trainer if config.policy.get("type") == "diffusion" else policy_trainer
    metrics = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(metrics["val_loss"])
    policy = load_policy(str(tmp_path / "run"))
    assert (policy.config.num_cameras, policy.config.image_shape) == (1, (SIZE, SIZE, 3))
    assert policy.obs_keys["image"] == "observation/image"
    obs = {"state": np.zeros((2, 2, 2), np.float32), "image": np.zeros((2, 2, 1, SIZE, SIZE, 3), np.uint8)}
    actions, valid = policy.act(obs, jax.random.PRNGKey(0))
    assert actions.shape == (2, policy.horizon, 2) and valid.shape == (2,)
    with pytest.raises(ValueError, match="obs\\['image'\\]"):
        policy.act({"state": obs["state"], "image": obs["image"][:, :, :, :8]}, jax.random.PRNGKey(0))


@pytest.mark.slow  # about 15 s: simulates and renders one demonstration in a child process
def test_metaworld_generator_stores_camera_frames_of_each_state(tmp_path):
    pytest.importorskip("metaworld")
    from data_pipelines import metaworld

    out = str(tmp_path / "mw_img")
    assert metaworld.main(["--tasks=reach-v3", "--episodes_per_task=1", "--camera=corner", "--image_size=16",
                           f"--output={out}"]) == 0
    cfg = _data_cfg(out, ("observation/image",))
    pairs = policy_data.load_pairs(cfg, "all", horizon=4, n_obs_steps=2)
    assert pairs["image"].shape[1:] == (2, 1, 16, 16, 3) and pairs["image"].dtype == np.uint8
    assert pairs["state"].shape[1:] == (2, 39) and pairs["image"].std() > 1.0
    # the arm moves: frames of the first and last state differ
    assert np.abs(pairs["image"][0, -1].astype(int) - pairs["image"][-1, -1].astype(int)).mean() > 0.5
