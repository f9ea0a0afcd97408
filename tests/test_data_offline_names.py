"""Datasets given by TFDS name + data_dir are read from `<data_dir>/<name>/<version>` only (offline), also for names
that TFDS registers itself (whose builders would fetch metadata over the network); a missing one names the
directory and the flags."""

import os

import numpy as np
import pytest

from data_pipelines import loader, rlds_reader, rlds_writer


def _write(path, num_episodes=3, action_dim=7):
    rng = np.random.default_rng(0)
    episodes = [rlds_writer.Episode(source=f"e{i}", action=rng.uniform(-1, 1, (12, action_dim)).astype(np.float32),
                                    observation={"state": np.zeros((12, 2), np.float32)}, language="pick",
                                    extras={}, metadata={}) for i in range(num_episodes)]
    return rlds_writer.write_rlds(episodes, path, name=os.path.basename(os.path.dirname(path)))


def test_registered_tfds_name_reads_the_local_builder_dir(tmp_path, monkeypatch):
    data_dir = str(tmp_path / "tfds")
    _write(os.path.join(data_dir, "fractal20220817_data", "0.1.0"), num_episodes=3)
    _write(os.path.join(data_dir, "fractal20220817_data", "0.2.0"), num_episodes=4)
    rlds_reader._open_builder.cache_clear()
    spec = loader.DatasetSpec(name="fractal20220817_data", data_dir=data_dir)
    assert rlds_reader.num_episodes(spec) == 4  # the newest prepared version
    pinned = loader.DatasetSpec(name="fractal20220817_data:0.1.0", data_dir=data_dir)
    assert rlds_reader.num_episodes(pinned) == 3
    ds = loader.make_chunk_dataset(spec, split="all", horizon=4, batch_size=8, shuffle=False, repeat=False,
                                   drop_remainder=False)
    assert sum(b["actions"].shape[0] for b in ds.as_numpy_iterator()) == 4 * 12


def test_missing_name_names_the_directory_and_the_flags(tmp_path):
    rlds_reader._open_builder.cache_clear()
    spec = loader.DatasetSpec(name="bridge_orig", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="bridge_orig/<version>.*--config.data.data_dir") as e:
        rlds_reader.num_episodes(spec)
    assert str(tmp_path) in str(e.value)
