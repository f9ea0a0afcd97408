"""Fault injection, converters: an --output that overlaps the input never loses the input; --overwrite deletes only
a previous dataset; temporary directories of killed conversions are cleaned."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import convert
from data_pipelines.rlds_writer import is_builder_dir

sys.path.insert(0, os.path.dirname(__file__))
from test_data_convert import make_episodes, write_npz_dir, write_npz_file  # noqa: E402

tfds.disable_progress_bar()


def _files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_output_equal_to_the_input_directory_keeps_every_episode(tmp_path, capsys):
    source = write_npz_dir(str(tmp_path / "demos"), make_episodes(seed=1))
    before = _files(source)
    assert convert.main(["--format=npz", f"--input={source}", f"--output={source}", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "--output" in err and source in err and "would overwrite or delete the input" in err
    assert _files(source) == before


def test_output_containing_the_input_file_keeps_it_and_its_neighbours(tmp_path, capsys):
    parent = tmp_path / "project"
    parent.mkdir()
    source = write_npz_file(str(parent / "demos.npz"), make_episodes(seed=2))
    (parent / "notes.txt").write_text("mine")
    assert convert.main(["--format=npz", f"--input={source}", f"--output={parent}", "--overwrite"]) == 1
    assert "contains --input" in capsys.readouterr().err
    assert sorted(os.listdir(parent)) == ["demos.npz", "notes.txt"] and (parent / "notes.txt").read_text() == "mine"


def test_output_inside_the_input_and_through_a_symlink_is_refused(tmp_path):
    source = write_npz_dir(str(tmp_path / "demos"), make_episodes(seed=3))
    with pytest.raises(ValueError, match="lies inside --input"):
        convert.convert("npz", source, os.path.join(source, "rlds"))
    link = tmp_path / "alias"
    link.symlink_to(source)
    with pytest.raises(ValueError, match="would overwrite or delete the input"):
        convert.convert("npz", source, str(link), overwrite=True)
    assert len(_files(source)) == 5


def test_overwrite_replaces_a_previous_dataset_but_never_other_files(tmp_path):
    source = write_npz_dir(str(tmp_path / "demos"), make_episodes(seed=4))
    out = tmp_path / "rlds"
    convert.convert("npz", source, str(out))
    assert is_builder_dir(str(out))
    convert.convert("npz", source, str(out), overwrite=True)  # a previous dataset: replaced
    assert is_builder_dir(str(out)) and tfds.builder_from_directory(str(out)).info.splits["train"].num_examples == 5
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a dataset written by data_pipelines"):
        convert.convert("npz", source, str(other), overwrite=True)
    assert os.listdir(other) == ["a.jpg"]


def test_temporary_directories_of_killed_conversions_are_cleaned(tmp_path):
    source = write_npz_dir(str(tmp_path / "demos"), make_episodes(seed=5))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".rlds.tmp-{dead.pid}-abc123"
    (stale / "partial").mkdir(parents=True)
    live = tmp_path / f".rlds.tmp-{os.getpid()}-def456"  # a conversion still running (this process)
    live.mkdir()
    convert.convert("npz", source, str(tmp_path / "rlds"))
    assert not stale.exists() and live.exists()
    assert np.isin(["rlds", "demos"], os.listdir(tmp_path)).all()


@pytest.mark.parametrize("layout", ["npz_dir", "npz_file", "zarr", "hdf5"])
def test_action_only_sources_read_back_with_plain_tfds_and_the_loader(tmp_path, layout):
    from data_pipelines import loader

    episodes = [{"action": e["action"]} for e in make_episodes(seed=6)]
    ends = np.cumsum([len(e["action"]) for e in episodes])
    fmt = "npz"
    if layout == "npz_dir":
        source = write_npz_dir(str(tmp_path / "demos"), episodes)
    elif layout == "npz_file":
        source = str(tmp_path / "demos.npz")
        np.savez(source, episode_ends=ends, action=np.concatenate([e["action"] for e in episodes]))
    elif layout == "zarr":
        zarr = pytest.importorskip("zarr")
        source, fmt = str(tmp_path / "replay.zarr"), "zarr"
        root = zarr.open_group(source, mode="w")
        root.require_group("data").create_array("action", data=np.concatenate([e["action"] for e in episodes]))
        root.require_group("meta").create_array("episode_ends", data=ends)
    else:
        h5py = pytest.importorskip("h5py")
        source, fmt = str(tmp_path / "demos.hdf5"), "hdf5"
        with h5py.File(source, "w") as f:
            for i, e in enumerate(episodes):
                f.create_dataset(f"data/demo_{i}/actions", data=e["action"])
    out = convert.convert(fmt, source, str(tmp_path / "rlds"))
    builder = tfds.builder_from_directory(out)
    steps = [len(list(ep["steps"])) for ep in builder.as_dataset(split="train")]
    assert steps == [len(e["action"]) for e in episodes]
    ds = loader.make_chunk_dataset(loader.DatasetSpec(path=out), split="all", horizon=4, batch_size=4,
                                   shuffle=False, repeat=False, drop_remainder=False)
    assert sum(b["actions"].shape[0] for b in ds.as_numpy_iterator()) == sum(steps)
