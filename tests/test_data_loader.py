"""Episode split, multi-process sharding, mixtures and dataset statistics (with their JSON cache)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings, strategies as st

from data_pipelines import EMBEDDED_DATASET_DIR, chunking, convert, loader, splits, statistics

tfds.disable_progress_bar()

EMBEDDED = loader.DatasetSpec(path=EMBEDDED_DATASET_DIR)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 12-episode npz -> RLDS dataset with 3-D actions and 2-D proprio; returns (builder dir, episodes)."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(7)
    episodes = []
    os.makedirs(root / "npz")
    for i, length in enumerate(rng.integers(1, 15, size=12)):
        episode = {"action": (rng.normal(size=(length, 3)) * [1.0, 5.0, 0.1]).astype(np.float32),
                   "proprio": rng.uniform(-2, 2, size=(length, 2)).astype(np.float32)}
        np.savez(root / "npz" / f"ep{i:02d}.npz", **episode)
        episodes.append(episode)
    return convert.convert("npz", str(root / "npz"), str(root / "rlds")), episodes


def episode_ids_seen(spec, split, process_index, process_count):
    ds = loader.make_chunk_dataset(spec, split=split, horizon=2, batch_size=512, shuffle=False, repeat=False,
                                   drop_remainder=False, with_episode_ids=True, process_index=process_index,
                                   process_count=process_count)
    batches = list(ds.as_numpy_iterator())
    return np.concatenate([b["episode_id"] for b in batches]), np.concatenate([b["timestep"] for b in batches])


# ---------------------------------------------------------------- split
def test_split_is_fixed_across_processes_and_runs():
    # Golden values: the split must never silently change (it decides which episodes are held out).
    assert splits.split_episode_ids(20, "val", 0.1, split_seed=0).tolist() == [7, 12]
    code = "from data_pipelines import splits; print(splits.split_episode_ids(200, 'val', 0.1, 3).tolist())"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert outputs == {f"{splits.split_episode_ids(200, 'val', 0.1, 3).tolist()}\n"}


@given(n=st.integers(2, 300), fraction=st.floats(0.01, 0.9), seed=st.integers(0, 10**6))
@settings(max_examples=25, deadline=None)
def test_split_partitions_episodes(n, fraction, seed):
    train = splits.split_episode_ids(n, "train", fraction, seed)
    val = splits.split_episode_ids(n, "val", fraction, seed)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))
    assert len(val) == splits.num_val_episodes(n, fraction) and len(val) >= 1 and len(train) >= 1
    assert len(val) == max(1, min(round(fraction * n), n - 1))


def test_split_seed_changes_the_split():
    a = splits.split_episode_ids(200, "val", 0.1, split_seed=0)
    b = splits.split_episode_ids(200, "val", 0.1, split_seed=1)
    assert len(a) == len(b) == 20 and set(a) != set(b)


# ---------------------------------------------------------------- sharding
@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_read_disjoint_shards_covering_the_split(process_count):
    expected = splits.split_episode_ids(200, "train", 0.1, 0)
    seen = []
    for process_index in range(process_count):
        ids, timesteps = episode_ids_seen(EMBEDDED, "train", process_index, process_count)
        seen.append(set(ids.tolist()))
        # every chunk of each episode is yielded exactly once, by this process only
        _, counts = np.unique(ids, return_counts=True)
        assert len(timesteps) == counts.sum() and (timesteps < np.repeat(counts, counts)).all()
    for i in range(process_count):
        for j in range(i + 1, process_count):
            assert not seen[i] & seen[j], f"processes {i} and {j} share episodes"
    assert set().union(*seen) == set(expected.tolist())
    sizes = [len(s) for s in seen]
    assert max(sizes) - min(sizes) <= 1


def test_val_and_train_chunks_come_from_their_split():
    ids, _ = episode_ids_seen(EMBEDDED, "val", 0, 1)
    assert set(ids.tolist()) == set(splits.split_episode_ids(200, "val", 0.1, 0).tolist())


# ---------------------------------------------------------------- training settings, mixtures
def test_training_batches_have_static_shapes_and_valid_masks():
    ds = loader.make_chunk_dataset(EMBEDDED, horizon=32, batch_size=16, seed=3, shuffle_buffer=1000)
    assert ds.element_spec["actions"].shape == (16, 32, 4) and ds.element_spec["action_pad_mask"].shape == (16, 32)
    for batch in ds.take(3).as_numpy_iterator():
        mask = batch["action_pad_mask"]
        assert mask[:, 0].all()  # the chunk's own step is always real
        assert (np.diff(mask.astype(int), axis=1) <= 0).all()  # real steps form a prefix
        assert np.abs(batch["actions"]).max() <= 1.0


def test_shuffle_is_seeded():
    def first_batch(seed):
        ds = loader.make_chunk_dataset(EMBEDDED, batch_size=8, seed=seed, shuffle_buffer=500)
        return next(iter(ds))["actions"].numpy()

    first = [first_batch(s) for s in (0, 0, 1)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


def test_weighted_mixture_and_mismatched_dims(synthetic):
    path, _ = synthetic
    small = loader.DatasetSpec(path=path, action_dims=(0, 1, 2, 0))  # 4-D like the embedded data
    ds = loader.make_chunk_dataset([(EMBEDDED, 3.0), (small, 1.0)], horizon=4, batch_size=500, seed=0,
                                   with_episode_ids=True)
    sources = np.concatenate([b["dataset_index"] for b in ds.take(4).as_numpy_iterator()])
    assert abs(np.mean(sources == 0) - 0.75) < 0.05
    with pytest.raises(ValueError, match="action_dims"):
        loader.make_chunk_dataset([EMBEDDED, loader.DatasetSpec(path=path)], horizon=4, batch_size=4)


def test_bad_keys_and_splits_fail_with_guidance(synthetic):
    path, _ = synthetic
    with pytest.raises(KeyError, match="available fields"):
        loader.make_chunk_dataset(loader.DatasetSpec(path=path, action_key="actions"), batch_size=2)
    with pytest.raises(ValueError, match="not one of"):
        loader.make_chunk_dataset(path, split="test", batch_size=2)
    with pytest.raises(FileNotFoundError, match="builder directory"):
        loader.make_chunk_dataset(os.path.dirname(path), batch_size=2)


def test_observation_history_matches_definition():
    x = np.arange(5)
    got = chunking.observation_history(x, 3).numpy()
    assert got.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]


# ---------------------------------------------------------------- statistics
def test_statistics_equal_numpy_and_second_call_reads_cache(synthetic, tmp_path):
    path, episodes = synthetic
    spec = loader.DatasetSpec(path=path, proprio_key="observation/proprio")
    train = splits.split_episode_ids(len(episodes), "train", 0.1, 0)
    stats = statistics.get_dataset_statistics(spec, "train", cache_dir=str(tmp_path))
    for field, key in (("action", "action"), ("proprio", "proprio")):
        data = np.concatenate([episodes[i][key] for i in train]).astype(np.float64)
        np.testing.assert_allclose(stats[field]["min"], data.min(0))
        np.testing.assert_allclose(stats[field]["max"], data.max(0))
        np.testing.assert_allclose(stats[field]["mean"], data.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats[field]["std"], data.std(0), rtol=1e-12)
        np.testing.assert_allclose(stats[field]["q01"], np.quantile(data, 0.01, axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats[field]["q99"], np.quantile(data, 0.99, axis=0), rtol=1e-12)
        assert stats[field]["count"] == len(data)
    assert stats["num_episodes"] == len(train) < len(episodes)
    assert os.path.dirname(stats["cache_path"]) == path  # cached next to the dataset

    with open(stats["cache_path"]) as f:  # tamper with the cache: a second call must return the file's content
        cached = json.load(f)
    cached["num_transitions"] = -1
    with open(stats["cache_path"], "w") as f:
        json.dump(cached, f)
    again = statistics.get_dataset_statistics(spec, "train", cache_dir=str(tmp_path))
    assert again["num_transitions"] == -1 and again["cache_path"] == stats["cache_path"]
    fresh = statistics.get_dataset_statistics(spec, "train", cache_dir=str(tmp_path), force_recompute=True)
    assert fresh["num_transitions"] == stats["num_transitions"]

    other = statistics.get_dataset_statistics(spec, "train", split_seed=1, cache_dir=str(tmp_path))
    assert other["fingerprint"] != stats["fingerprint"] and other["cache_path"] != stats["cache_path"]
    everything = statistics.get_dataset_statistics(spec, "all", cache_dir=str(tmp_path))
    assert everything["num_transitions"] == sum(len(e["action"]) for e in episodes)


READ_ONLY_SCRIPT = """
import json, sys
from data_pipelines import loader, statistics
path, cache = sys.argv[1], sys.argv[2]
default = statistics.get_dataset_statistics(path)                      # precomputed JSON shipped with the data
other = statistics.get_dataset_statistics(path, split_seed=5, cache_dir=cache)   # must fall back to cache
batch = next(iter(loader.make_chunk_dataset(path, batch_size=4, shuffle_buffer=100)))
print(json.dumps({"default": default["cache_path"], "other": other["cache_path"],
                  "shape": list(batch["actions"].shape)}))
"""


def _drop_dac_capabilities():
    """In a child of root: drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so that permission bits apply after exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_default_dataset_works_from_a_read_only_directory(tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(EMBEDDED_DATASET_DIR, data)
    cache = tmp_path / "cache"
    for root, dirs, files in os.walk(data):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        os.chmod(root, 0o555)
    env = {**os.environ, "OAT_JAX_CACHE_DIR": str(cache / "default")}
    result = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT, str(data), str(cache)], capture_output=True,
                            text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            preexec_fn=_drop_dac_capabilities if os.geteuid() == 0 else None)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert os.path.dirname(out["default"]) == str(data)
    assert os.path.dirname(out["other"]) == str(cache)
    assert out["shape"] == [4, 32, 4]
    assert sorted(os.listdir(data)) == sorted(os.listdir(EMBEDDED_DATASET_DIR))  # nothing written next to data
