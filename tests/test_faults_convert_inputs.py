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


def test_a_zarr_object_array_is_refused_before_any_chunk_is_unpickled(tmp_path, capsys):
    """A replay buffer whose action array has dtype object (its chunk a pickle that would create a marker file
    when loaded) is refused from the array metadata: the payload never runs, the error names the array."""
    import json
    import pickle

    from data_pipelines import convert

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    store = tmp_path / "buffer.zarr"
    (store / "data" / "action").mkdir(parents=True)
    (store / "meta" / "episode_ends").mkdir(parents=True)
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / "data" / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / "meta" / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / "data" / "action" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4], "chunks": [4], "dtype": "|O", "compressor": None, "fill_value": 0,
        "filters": [{"id": "pickle", "protocol": 5}], "order": "C", "dimension_separator": "."}))
    (store / "data" / "action" / "0").write_bytes(pickle.dumps(np.array([Payload()] * 4, dtype=object)))
    (store / "meta" / "episode_ends" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "<i8", "compressor": None, "fill_value": 0,
        "filters": None, "order": "C", "dimension_separator": "."}))
    (store / "meta" / "episode_ends" / "0").write_bytes(np.array([4], np.int64).tobytes())
    assert not marker.exists()
    assert convert.main(["--format=zarr", f"--input={store}", f"--output={tmp_path / 'out'}"]) == 1
    assert "numeric arrays only" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
