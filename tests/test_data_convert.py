"""Converters (hdf5 / zarr / npz -> RLDS) and the loader's chunks against a plain numpy reference."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import chunking, convert, loader, rlds_reader

tfds.disable_progress_bar()

HORIZON = 4
LENGTHS = (6, 1, 9, 3, 4)  # T = 1, T < H, T > H: every padding case
ACTION_DIM, STATE_DIM, IMAGE_SHAPE = 3, 2, (6, 5, 3)


def make_episodes(seed=0, with_images=False):
    """Synthetic episodes: list of {"action": (T, 3) f64, "state": (T, 2) f32, ["image": (T, 6, 5, 3) u8]}."""
    rng = np.random.default_rng(seed)
    episodes = []
    for length in LENGTHS:
        episode = {"action": rng.normal(size=(length, ACTION_DIM)),
                   "state": rng.normal(size=(length, STATE_DIM)).astype(np.float32)}
        if with_images:
            episode["image"] = rng.integers(0, 256, size=(length, *IMAGE_SHAPE), dtype=np.uint8)
        episodes.append(episode)
    return episodes


def reference_chunks(actions, horizon):
    """Plain-loop chunking rule: every t starts a chunk; past the end repeat the last action, mask False."""
    chunks, masks = [], []
    for t in range(len(actions)):
        chunk = np.zeros((horizon, actions.shape[1]), actions.dtype)
        mask = np.zeros(horizon, bool)
        for h in range(horizon):
            if t + h < len(actions):
                chunk[h], mask[h] = actions[t + h], True
            else:
                chunk[h] = actions[len(actions) - 1]
        chunks.append(chunk)
        masks.append(mask)
    return np.stack(chunks), np.stack(masks)


def reference_history(x, n_obs_steps):
    """Plain-loop history: frame t holds x[t-K+1 .. t], indices below 0 replaced by 0."""
    return np.stack([np.stack([x[max(t - n_obs_steps + 1 + k, 0)] for k in range(n_obs_steps)])
                     for t in range(len(x))])


# ---------------------------------------------------------------- writers of the three input layouts
def write_hdf5(path, episodes, language="open the drawer"):
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": language})
        for i, episode in enumerate(episodes):
            group = data.create_group(f"demo_{i}")
            if "action" in episode:
                group.create_dataset("actions", data=episode["action"])
            group.create_dataset("rewards", data=np.zeros(len(episode["state"])))
            obs = group.create_group("obs")
            for key in ("state", "image"):
                if key in episode:
                    obs.create_dataset(key, data=episode[key])
    return path


def write_zarr(path, episodes):
    import zarr

    root = zarr.open_group(path, mode="w", zarr_format=2)  # diffusion-policy replay buffers are zarr v2
    data = root.require_group("data")
    for key in ("action", "state", "image"):
        if key in episodes[0]:
            data.create_array(key, data=np.concatenate([e[key] for e in episodes]))
    ends = np.cumsum([len(e["state"]) for e in episodes])
    root.require_group("meta").create_array("episode_ends", data=ends)
    return path


def write_npz_dir(path, episodes):
    os.makedirs(path)
    for i, episode in enumerate(episodes):
        np.savez(os.path.join(path, f"episode_{i}.npz"), **episode)
    return path


def write_npz_file(path, episodes):
    keys = episodes[0].keys()
    np.savez(path, episode_ends=np.cumsum([len(e["state"]) for e in episodes]),
             **{k: np.concatenate([e[k] for e in episodes]) for k in keys})
    return path


WRITERS = {"hdf5": (write_hdf5, "in.hdf5"), "zarr": (write_zarr, "in.zarr"), "npz": (write_npz_dir, "in_npz"),
           "npz_file": (write_npz_file, "in.npz")}


def convert_episodes(tmp_path, layout, episodes, image_encoding="png"):
    writer, name = WRITERS[layout]
    source = writer(str(tmp_path / name), episodes)
    return convert.convert("npz" if layout.startswith("npz") else layout, source, str(tmp_path / "rlds"),
                           image_encoding=image_encoding)


def all_chunks(spec, **kwargs):
    """Every chunk of the whole dataset, in order, as concatenated numpy arrays."""
    ds = loader.make_chunk_dataset(spec, split="all", horizon=HORIZON, batch_size=7, shuffle=False, repeat=False,
                                   drop_remainder=False, with_episode_ids=True, **kwargs)
    batches = list(ds.as_numpy_iterator())
    return {k: (np.concatenate([b[k] for b in batches]) if k != "observation" else
                {o: np.concatenate([b[k][o] for b in batches]) for o in batches[0][k]}) for k in batches[0]}


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("layout", ["hdf5", "zarr", "npz", "npz_file"])
def test_round_trip_matches_numpy_reference(tmp_path, layout):
    episodes = make_episodes(seed=1)
    output = convert_episodes(tmp_path, layout, episodes)
    assert tfds.builder_from_directory(output).info.splits["train"].num_examples == len(LENGTHS)

    spec = loader.DatasetSpec(path=output, obs_keys=("observation/state",))
    got = all_chunks(spec, n_obs_steps=2)
    ref_actions, ref_masks, ref_states, ref_ids, ref_t = [], [], [], [], []
    for i, episode in enumerate(episodes):
        chunks, masks = reference_chunks(episode["action"].astype(np.float32), HORIZON)
        ref_actions.append(chunks)
        ref_masks.append(masks)
        ref_states.append(reference_history(episode["state"], 2))
        ref_ids += [i] * len(chunks)
        ref_t += list(range(len(chunks)))
    assert got["actions"].dtype == np.float32 and got["action_pad_mask"].dtype == bool
    np.testing.assert_array_equal(got["episode_id"], ref_ids)
    np.testing.assert_array_equal(got["timestep"], ref_t)
    np.testing.assert_array_equal(got["actions"], np.concatenate(ref_actions))
    np.testing.assert_array_equal(got["action_pad_mask"], np.concatenate(ref_masks))
    np.testing.assert_array_equal(got["observation"]["state"], np.concatenate(ref_states))


def test_eager_chunking_of_read_episodes_matches_reference(tmp_path):
    episodes = make_episodes(seed=2)
    output = convert_episodes(tmp_path, "npz", episodes)
    spec = loader.DatasetSpec(path=output)
    trajectories = list(rlds_reader.read_trajectories(spec, range(len(episodes))))  # eager tensors
    assert [int(t["episode_id"]) for t in trajectories] == list(range(len(episodes)))
    for traj, episode in zip(trajectories, episodes):
        got = chunking.chunk_actions(traj["actions"], HORIZON)  # eager call, no tf.function
        chunks, masks = reference_chunks(episode["action"].astype(np.float32), HORIZON)
        np.testing.assert_array_equal(got["actions"].numpy(), chunks)
        np.testing.assert_array_equal(got["action_pad_mask"].numpy(), masks)


def test_hdf5_images_language_and_action_dims(tmp_path):
    episodes = make_episodes(seed=3, with_images=True)
    output = convert_episodes(tmp_path, "hdf5", episodes)
    features = tfds.builder_from_directory(output).info.features["steps"]
    assert isinstance(features["observation"]["image"], tfds.features.Image)
    spec = loader.DatasetSpec(path=output, obs_keys=("observation/image",), action_dims=(2, 0))
    got = all_chunks(spec, n_obs_steps=3, with_language=True, decode_images=True)
    images = np.concatenate([reference_history(e["image"], 3) for e in episodes])
    assert got["observation"]["image"].dtype == np.uint8
    np.testing.assert_array_equal(got["observation"]["image"], images)  # (N, 3, 6, 5, 3), PNG is lossless
    assert set(got["language"]) == {b"open the drawer"}
    first = reference_chunks(episodes[0]["action"][:, [2, 0]].astype(np.float32), HORIZON)[0]
    np.testing.assert_array_equal(got["actions"][:LENGTHS[0]], first)
    encoded = all_chunks(spec, n_obs_steps=1)  # images requested but not decoded: encoded bytes
    assert encoded["observation"]["image"].dtype == object and encoded["observation"]["image"].shape[1:] == (1,)


def test_convert_cli_writes_loadable_dataset(tmp_path, capsys):
    source = write_npz_dir(str(tmp_path / "in"), make_episodes(seed=4))
    output = str(tmp_path / "out")
    assert convert.main(["--format=npz", f"--input={source}", f"--output={output}", "--language=stack"]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    builder = tfds.builder_from_directory(output)
    episode = next(iter(builder.as_dataset(split="train")))
    steps = next(iter(episode["steps"].batch(100)))
    assert steps["language_instruction"][0].numpy() == b"stack"
    assert steps["is_first"].numpy().tolist() == [True] + [False] * (LENGTHS[0] - 1)
    # a second run must not silently overwrite
    assert convert.main(["--format=npz", f"--input={source}", f"--output={output}"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_conversion_stores_the_train_statistics_a_fresh_pass_computes(tmp_path):
    """The statistics computed while writing are found next to the dataset and equal, field for field, those of a
    separate pass over the written train split (so training never re-reads the dataset for them)."""
    from data_pipelines import statistics
    from data_pipelines.rlds_writer import TRAIN_STATISTICS_SPLIT

    source = write_npz_dir(str(tmp_path / "in"), make_episodes(seed=6))
    output = str(tmp_path / "out")
    assert convert.main(["--format=npz", f"--input={source}", f"--output={output}"]) == 0
    val_fraction, split_seed = TRAIN_STATISTICS_SPLIT
    stored = statistics.get_dataset_statistics(output, val_fraction=val_fraction, split_seed=split_seed)
    assert os.path.dirname(stored["cache_path"]) == output
    fresh = statistics.compute_dataset_statistics(output, "train", val_fraction=val_fraction, split_seed=split_seed)
    assert {k: v for k, v in stored.items() if k not in ("cache_path", "fingerprint")} == fresh
    assert 0 < fresh["num_episodes"] < len(LENGTHS)  # the train split only


# ---------------------------------------------------------------- malformed inputs
def _corrupt(kind):
    episodes = make_episodes(seed=5)
    bad = episodes[2]
    if kind == "nan_action":
        bad["action"][1, 0] = np.nan
    elif kind == "empty_episode":
        episodes[2] = {k: v[:0] for k, v in bad.items()}
    elif kind == "ragged_action_dims":
        bad["action"] = np.concatenate([bad["action"], bad["action"][:, :1]], axis=1)
    elif kind == "missing_key":
        del bad["action"]
    return episodes


# (layout, kind, what the message must name). zarr / single-file npz hold one concatenated array per key, so
# ragged dims cannot occur there and a missing key concerns every episode.
MALFORMED = [(layout, kind, episode_name)
             for layout, episode_name in [("hdf5", "data/demo_2"), ("npz", "episode_2")]
             for kind in ("nan_action", "empty_episode", "ragged_action_dims", "missing_key")] + [
    ("zarr", "nan_action", "episode 2"), ("zarr", "empty_episode", "episode 2"),
    ("zarr", "missing_key", "every episode"), ("npz_file", "nan_action", "episode 2"),
    ("npz_file", "empty_episode", "episode 2")]


@pytest.mark.parametrize("layout,kind,episode_name", MALFORMED)
def test_malformed_input_fails_naming_episode_and_leaves_nothing(tmp_path, layout, kind, episode_name):
    episodes = _corrupt(kind)
    if layout in ("zarr", "npz_file") and kind == "missing_key":
        for e in episodes:
            e.pop("action", None)
    writer, name = WRITERS[layout]
    source = writer(str(tmp_path / name), episodes)
    output = tmp_path / "rlds"
    with pytest.raises(ValueError) as info:
        convert.convert("npz" if layout.startswith("npz") else layout, source, str(output))
    message = str(info.value)
    assert episode_name in message and os.path.basename(source) in message, message
    expected = {"nan_action": "NaN", "empty_episode": "empty", "ragged_action_dims": "action",
                "missing_key": "missing action key"}[kind]
    assert expected in message, message
    assert not output.exists()
    assert not glob.glob(str(tmp_path / ".rlds.tmp-*")), "temporary output left behind"


def test_chunking_runs_inside_tf_function():
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)
    graph_fn = tf.function(lambda a: chunking.chunk_actions(a, 3),
                           input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    got = graph_fn(actions)
    chunks, masks = reference_chunks(actions, 3)
    np.testing.assert_array_equal(got["actions"].numpy(), chunks)
    np.testing.assert_array_equal(got["action_pad_mask"].numpy(), masks)


def _libero_file(path, instruction, num_demos, seed, with_images=False):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": instruction, "domain_name": "libero"})
        for d in range(num_demos):
            demo = data.create_group(f"demo_{d}")
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (5 + d, 7)))
            obs = demo.create_group("obs")
            obs.create_dataset("joint_states", data=rng.normal(size=(5 + d, 7)).astype(np.float32))
            if with_images:
                obs.create_dataset("agentview_rgb", data=rng.integers(0, 256, (5 + d, 16, 16, 3), dtype=np.uint8))
    return path


def test_libero_folder_and_glob_convert_to_one_dataset_with_each_files_instruction(tmp_path):
    suite = tmp_path / "libero_10"
    suite.mkdir()
    tasks = ["put both the alphabet soup and the tomato sauce in the basket",
             "turn on the stove and put the moka pot on it", "pick up the book and place it in the back compartment"]
    for i, task in enumerate(tasks):
        _libero_file(str(suite / f"task_{i}_demo.hdf5"), task, num_demos=2, seed=i)
    for source, out in ((str(suite), "from_folder"), (str(suite / "*.hdf5"), "from_glob")):
        path = convert.convert("hdf5", source, str(tmp_path / out))
        builder = tfds.builder_from_directory(path)
        episodes = list(builder.as_dataset(split="train"))
        assert len(episodes) == 6
        languages = [next(iter(ep["steps"]))["language_instruction"].numpy().decode() for ep in episodes]
        assert languages == [t for t in tasks for _ in range(2)]


def test_images_are_jpeg_by_default_and_png_on_request(tmp_path):
    _libero_file(str(tmp_path / "demo.hdf5"), "stack", num_demos=1, seed=0, with_images=True)
    for encoding in ("jpeg", "png"):
        out = tmp_path / encoding
        argv = ["--format=hdf5", f"--input={tmp_path / 'demo.hdf5'}", f"--output={out}"]
        assert convert.main(argv + ([] if encoding == "jpeg" else ["--image_encoding=png"])) == 0
        feature = tfds.builder_from_directory(str(out)).info.features["steps"]["observation"]["agentview_rgb"]
        assert feature.encoding_format == encoding


def test_robomimic_masks_become_splits(tmp_path):
    h5py = pytest.importorskip("h5py")
    episodes = make_episodes(seed=5)  # 5 demos
    path = write_hdf5(str(tmp_path / "robomimic.hdf5"), episodes)
    masks = {"train": ["demo_0", "demo_2", "demo_3"], "valid": ["demo_1", "demo_4"], "20_percent": ["demo_3"]}
    with h5py.File(path, "a") as f:
        for name, demos in masks.items():
            f.create_dataset(f"mask/{name}", data=np.array([d.encode() for d in demos]))
    out = convert.convert("hdf5", path, str(tmp_path / "rlds"))
    builder = tfds.builder_from_directory(out)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3, "valid": 2, "20_percent": 1}
    for split, demos in masks.items():
        actions = [np.stack([s["action"] for s in ep["steps"].as_numpy_iterator()])
                   for ep in builder.as_dataset(split=split)]
        for got, demo in zip(actions, demos, strict=True):
            np.testing.assert_allclose(got, episodes[int(demo.split("_")[1])]["action"].astype(np.float32))
    # the loader reads any of them as its source split
    spec = rlds_reader.DatasetSpec(path=out, source_split="valid")
    assert rlds_reader.num_episodes(spec) == 2
    with h5py.File(path, "a") as f:
        f.create_dataset("mask/broken", data=np.array([b"demo_9"]))
    with pytest.raises(convert.EpisodeError, match=r"robomimic\.hdf5: mask/broken lists demos .*demo_9"):
        convert.convert("hdf5", path, str(tmp_path / "rlds_broken"))
    assert not os.path.exists(tmp_path / "rlds_broken")
