"""Streamed policy data: pairs built in tf.data from each frame once, resumed exactly; observations from the config
(any state keys, any cameras, an optional instruction); targets tokenized on the device inside the step."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import pairs, rlds_writer
from data_pipelines.rlds_reader import DatasetSpec
from experiments.configs import policy as policy_configs
from policy_helpers import save_tiny_oat

SIZE, LENGTHS = 16, (9, 7, 8, 6, 9, 7)
INSTRUCTIONS = ("open the drawer", "push the block")


@pytest.fixture(scope="module")
def camera_dataset(tmp_path_factory):
    """Six episodes with two cameras, a language instruction (two distinct ones) and no state; the pixels of
    camera c at step t of episode e hold (t, e, c) and the action is (t, e)."""
    episodes = []
    for e, length in enumerate(LENGTHS):
        t = np.arange(length, dtype=np.float32)
        frames = [np.zeros((length, SIZE, SIZE, 3), np.uint8) for _ in range(2)]
        for c, f in enumerate(frames):
            f[..., 0], f[..., 1], f[..., 2] = t[:, None, None], e, c
        episodes.append(rlds_writer.Episode(
            source=f"camera episode {e}", action=np.stack([t, np.full_like(t, e)], 1),
            observation={"front": frames[0], "wrist": frames[1]}, language=INSTRUCTIONS[e % 2], extras={},
            metadata={}))
    return rlds_writer.write_rlds(episodes, os.path.join(str(tmp_path_factory.mktemp("cam")), "cam_rlds"),
                                  name="cam_rlds")


OBS = pairs.ObservationSpec(image_keys=("observation/wrist", "observation/front"), language_key="language_instruction")


def _stream(path, skip=0, crop=1.0):
    return pairs.make_pair_dataset(DatasetSpec(path=path), OBS, split="all", horizon=4, n_obs_steps=2, batch_size=5,
                                   shuffle=True, repeat=True, seed=7, shuffle_buffer=20, episode_shuffle_buffer=3,
                                   instructions=INSTRUCTIONS, crop_min_area=crop, skip=skip)


def test_streamed_pairs_hold_aligned_histories_and_resume_exactly(camera_dataset):
    it = _stream(camera_dataset).as_numpy_iterator()
    batches = [next(it) for _ in range(12)]  # more pairs than the dataset holds: the stream repeats
    b = batches[0]
    assert set(b) == {"actions", "image", "language", "episode_id", "dataset_index"}  # no state: none asked for
    assert b["image"].shape == (5, 2, 2, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
    for batch in batches:
        image = batch["image"]
        np.testing.assert_array_equal(image[:, :, 0, 0, 0, 2], 1)  # cameras in image_keys order: wrist first
        np.testing.assert_array_equal(image[:, -1, 0, 0, 0, 0], batch["actions"][:, 0, 0])  # newest frame = step t
        assert (image[:, :, 0, 0, 0, 1] == batch["episode_id"][:, None]).all()  # both frames from its episode
        np.testing.assert_array_equal(batch["language"], batch["episode_id"] % 2 + 1)  # ids 1..2 of INSTRUCTIONS
    # the stream is a fixed function of the seed: skipping the pairs of 7 steps continues exactly
    resumed = _stream(camera_dataset, skip=7 * 5).as_numpy_iterator()
    for batch in batches[7:]:
        again = next(resumed)
        for name in batch:
            np.testing.assert_array_equal(batch[name], again[name], err_msg=name)
    # random crops are a function of the seed and the pair's position: a rebuilt stream crops alike
    cropped = [next(_stream(camera_dataset, crop=0.5).as_numpy_iterator()) for _ in range(2)]
    np.testing.assert_array_equal(cropped[0]["image"], cropped[1]["image"])


def test_random_resized_crop_is_one_crop_per_history():
    gradient = np.tile((np.arange(SIZE, dtype=np.uint8) * 16)[None, :, None], (SIZE, 1, 3))  # (h, w, 3)
    history = np.stack([gradient, gradient])[:, None]  # (K, cams, h, w, c)
    crops = [pairs.random_resized_crop(tf.constant(history), 0.3, tf.constant([3, i], tf.int64)).numpy()
             for i in range(4)]
    for crop in crops:
        assert crop.shape == history.shape and crop.dtype == np.uint8
        np.testing.assert_array_equal(crop[0], crop[1])  # the K frames see the same crop
    assert sum(not np.array_equal(c, history) for c in crops) >= 3  # a zoom into the gradient changes it
    again = pairs.random_resized_crop(tf.constant(history), 0.3, tf.constant([3, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(again, crops[0])
    full = pairs.random_resized_crop(tf.constant(history), 1.0, tf.constant([3, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(full, history)  # area fraction 1: the image itself


def test_the_pair_pipeline_validates_its_observation_spec(camera_dataset):
    with pytest.raises(ValueError, match="at least one state key or one camera"):
        pairs.ObservationSpec(language_key="language_instruction")
    with pytest.raises(ValueError, match="are not Image features"):
        next(pairs.make_pair_dataset(DatasetSpec(path=camera_dataset), pairs.ObservationSpec(
            image_keys=("action",)), split="all", horizon=4, n_obs_steps=2, batch_size=2, shuffle=False,
            repeat=False).as_numpy_iterator())


def _config(variant, path):
    config = policy_configs.get_config(f"{variant},test")
    config.data.update(path=path, state_keys=(), image_keys=("observation/front", "observation/wrist"),
                       language_key="language_instruction", shuffle_buffer=16, crop_min_area=0.8, val_fraction=0.34)
    config.optim.min_lr_ratio = 1.0  # a constant lr after the warmup: the 2-step run's schedule is the 4-step one's
    config.train.update(batch_size=8, num_steps=4, eval_every=2)
    if variant == "bin":
        config.tokenizer.fit_options.num_bins = 8
        config.data.horizon = 4
    else:
        config.data.horizon = 4
    config.policy.n_action_steps = 2
    return config


def _act_checks(policy):
    assert policy.obs_keys == {"image": "observation/front,observation/wrist", "language": "language_instruction"}
    assert policy.instructions == INSTRUCTIONS and policy.config.obs_dim == 0 and policy.config.num_cameras == 2
    obs = {"image": np.zeros((3, 2, 2, SIZE, SIZE, 3), np.uint8), "language": list(INSTRUCTIONS) + [INSTRUCTIONS[0]]}
    actions, valid = policy.act(obs, jax.random.PRNGKey(0))
    assert actions.shape == (3, 4, 2) and valid.all()
    with pytest.raises(ValueError, match="not trained on"):
        policy.act({**obs, "language": ["fly to the moon"] * 3}, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"no \['language'\] entry"):
        policy.act({"image": obs["image"]}, jax.random.PRNGKey(0))


def test_camera_only_language_token_policy_streams_and_resumes_exactly(camera_dataset, tmp_path):
    """Cameras + instruction, no state, streamed with random crops; Bin targets made on the device. A run stopped
    at step 2 and resumed to 4 ends with the params of an uninterrupted 4-step run."""
    from oat_jax.policy import load_policy
    from oat_jax.training.policy.trainer import train_and_evaluate

    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    metrics = train_and_evaluate(_config("bin", camera_dataset), full)
    assert np.isfinite(metrics["val_loss"])
    short = _config("bin", camera_dataset)
    short.train.update(num_steps=2)
    train_and_evaluate(short, split)
    train_and_evaluate(_config("bin", camera_dataset), split)
    a, b = load_policy(full), load_policy(split)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
    with open(os.path.join(full, "final_metrics.json"), encoding="utf-8") as f:
        final = json.load(f)
    assert final["token_stats_split"] == "val" and final["train_pairs"] == sum(
        n for e, n in enumerate(LENGTHS) if e not in _val_episodes(len(LENGTHS)))
    _act_checks(a)


def _val_episodes(n):
    from data_pipelines import splits
    return set(splits.split_episode_ids(n, "val", 0.34, 0).tolist())


def test_camera_only_language_diffusion_policy_streams(camera_dataset, tmp_path):
    from oat_jax.policy import load_policy
    from oat_jax.training.policy.diffusion_trainer import train_and_evaluate

    config = _config("dp", camera_dataset)
    config.train.update(num_steps=2, eval_every=2)
    assert np.isfinite(train_and_evaluate(config, str(tmp_path / "dp"))["val_loss"])
    _act_checks(load_policy(str(tmp_path / "dp")))


@pytest.mark.parametrize("kind", ["oat", "bin"])
def test_device_targets_equal_the_host_tokenizer(tmp_path, kind):
    from oat_jax.action_tokenizers import BinActionTokenizer, load_action_tokenizer

    chunks = np.random.default_rng(0).uniform(-2, 2, (256, 8, 3)).astype(np.float32)
    if kind == "oat":
        tokenizer = load_action_tokenizer(save_tiny_oat(str(tmp_path / "tok"), action_dim=3))
    else:
        tokenizer = BinActionTokenizer.fit(chunks, num_bins=16)
    fn, params = tokenizer.device_tokenizer()
    tokens, lengths = jax.jit(fn)(params, chunks)
    host_tokens, host_lengths = tokenizer.tokenize(chunks)
    np.testing.assert_array_equal(np.asarray(lengths), host_lengths)
    assert np.mean(np.asarray(tokens) == host_tokens) > 0.999  # bin edges may round apart in another compilation


def test_tokenizer_units_give_each_member_its_own_targets(tmp_path):
    """A tokenizer trained on a mixture normalizes each member with its own statistics: rows converted to the
    default member's units tokenize (one call) exactly as that member's tokenizer tokenizes them."""
    from oat_jax import OATTokenizer
    from oat_jax.action_tokenizers import load_action_tokenizer
    from oat_jax.normalizer import Normalizer
    from oat_jax.training.policy import data as policy_data

    rng = np.random.default_rng(0)
    base = load_action_tokenizer(save_tiny_oat(str(tmp_path / "tok"), action_dim=3))
    members = {"a": Normalizer.fit(rng.uniform(-1, 1, (64, 3)), "limits"),
               "b": Normalizer.fit(rng.uniform(-50, 80, (64, 3)), "limits")}
    tokenizer = OATTokenizer(base.config, base.params, members["a"], members)
    actions = np.concatenate([rng.uniform(-1, 1, (32, 8, 3)), rng.uniform(-50, 80, (32, 8, 3))]).astype(np.float32)
    member = np.repeat(np.array([0, 1], np.int32), 32)
    tokens, _ = tokenizer.tokenize(policy_data.tokenizer_units(tokenizer, ["a", "b"])(actions, member))
    expected = np.concatenate([tokenizer.for_dataset("a").tokenize(actions[:32])[0],
                               tokenizer.for_dataset("b").tokenize(actions[32:])[0]])
    assert np.mean(tokens == expected) > 0.99  # a float round trip may move a value across an FSQ edge
    assert not np.array_equal(tokenizer.tokenize(actions)[0][32:], expected[32:])  # without it: wrong targets
    with pytest.raises(ValueError, match=r"no normalizer for \['c'\]"):
        policy_data.tokenizer_units(tokenizer, ["a", "c"])


def _state_dataset(root, name, scale, seed):
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(6):
        action = rng.uniform(-1, 1, (12, 2)).astype(np.float32) * scale
        episodes.append(rlds_writer.Episode(source=f"{name} episode {e}", action=action,
                                            observation={"state": np.cumsum(action, 0)}, language="", extras={},
                                            metadata={}))
    return rlds_writer.write_rlds(episodes, os.path.join(root, name), name=name)


def test_a_mixture_streams_with_each_members_normalizers(tmp_path):
    """Two datasets of different scales as a weighted mixture: the Diffusion Policy fits a state and an action
    normalizer per member, saves them, and acts in the units of the member it is asked for."""
    from oat_jax.policy import load_policy
    from oat_jax.training.policy.diffusion_trainer import train_and_evaluate

    small = _state_dataset(str(tmp_path), "small", 1.0, 0)
    large = _state_dataset(str(tmp_path), "large", 100.0, 1)
    config = _config("dp", "")
    config.data.update(path=f"{small}:1,{large}:3", state_keys=("observation/state",), image_keys=(),
                       language_key="", crop_min_area=1.0)
    config.train.update(num_steps=2, eval_every=2)
    in_memory = _config("dp", "")
    in_memory.data.update(path=config.data.path, shuffle_buffer=0)
    with pytest.raises(ValueError, match="is a mixture: .*shuffle_buffer > 0"):
        train_and_evaluate(in_memory, str(tmp_path / "refused"))
    assert np.isfinite(train_and_evaluate(config, str(tmp_path / "mix"))["val_loss"])
    policy = load_policy(str(tmp_path / "mix"))
    assert sorted(policy.datasets) == ["large", "small"]
    scale = {label: entry["action"].unnormalize(np.ones((1, 2), np.float32)) for label, entry in
             policy.datasets.items()}
    assert np.abs(scale["large"]).max() > 20 * np.abs(scale["small"]).max()  # each member's own action range
    obs = {"state": np.zeros((2, 2, 2), np.float32)}
    small_act, _ = policy.act(obs, jax.random.PRNGKey(0), dataset="small")
    large_act, _ = policy.act(obs, jax.random.PRNGKey(0), dataset="large")
    assert np.abs(large_act).max() > 10 * np.abs(small_act).max()
    with pytest.raises(ValueError, match="trained on"):
        policy.act(obs, jax.random.PRNGKey(0), dataset="other")
