"""Fault injection, converter inputs: truncated, corrupt or mis-typed input files are an error naming the file (no
raw library traceback), and the output is not created."""

import os
import pickle
import sys

import numpy as np
import pytest

from data_pipelines import convert

sys.path.insert(0, os.path.dirname(__file__))
from test_data_convert import make_episodes, write_npz_dir, write_npz_file  # noqa: E402


def _fails_naming(capsys, tmp_path, fmt, source, *fragments):
    out = tmp_path / "rlds"
    assert convert.main([f"--format={fmt}", f"--input={source}", f"--output={out}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()


def test_truncated_npz_in_a_directory_names_that_file(tmp_path, capsys):
    source = write_npz_dir(str(tmp_path / "demos"), make_episodes(seed=1))
    bad = os.path.join(source, "episode_2.npz")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])
    _fails_naming(capsys, tmp_path, "npz", source, bad, "cannot read it as an .npz archive")


def test_a_pickle_posing_as_npz_is_refused_without_suggesting_allow_pickle(tmp_path, capsys):
    source = str(tmp_path / "demos.npz")
    with open(source, "wb") as f:
        pickle.dump({"action": np.zeros((3, 2))}, f)
    _fails_naming(capsys, tmp_path, "npz", source, source, "pickled objects, which are never loaded")
    assert "allow_pickle" not in capsys.readouterr().err


def test_truncated_single_npz_names_the_file(tmp_path, capsys):
    source = write_npz_file(str(tmp_path / "all.npz"), make_episodes(seed=2))
    data = open(source, "rb").read()
    open(source, "wb").write(data[:100])
    _fails_naming(capsys, tmp_path, "npz", source, source)


def test_non_hdf5_and_broken_problem_info_name_the_file(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    source = str(tmp_path / "demos.hdf5")
    with open(source, "w") as f:
        f.write("this is not an HDF5 file")
    _fails_naming(capsys, tmp_path, "hdf5", source, source, "cannot read it as an HDF5 file")
    libero = str(tmp_path / "libero.hdf5")
    with h5py.File(libero, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = "{not json"
        data.create_group("demo_0").create_dataset("actions", data=np.zeros((4, 7), np.float32))
    _fails_naming(capsys, tmp_path, "hdf5", libero, libero, "problem_info", "not valid JSON")
