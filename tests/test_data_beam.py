"""Conversion on Apache Beam: a folder of HDF5 files converted with two worker processes equals the single-process
conversion array for array (and split for split); a malformed episode fails the pipeline with the message naming
its file and episode, and leaves no output directory."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import convert

pytest.importorskip("apache_beam")
h5py = pytest.importorskip("h5py")


def _write_suite(folder, num_files=3, demos=5, seed=0, nan_in=None):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for f in range(num_files):
        with h5py.File(os.path.join(folder, f"task_{f}.hdf5"), "w") as h:
            data = h.create_group("data")
            data.attrs["problem_info"] = json.dumps({"language_instruction": f"task number {f}"})
            for e in range(demos):
                demo = data.create_group(f"demo_{e}")
                steps = 4 + (3 * e + f) % 7
                actions = rng.normal(size=(steps, 7))
                if nan_in == (f, e):
                    actions[2, 1] = np.nan
                demo.create_dataset("actions", data=actions)
                demo.create_dataset("rewards", data=rng.normal(size=steps))
                obs = demo.create_group("obs")
                obs.create_dataset("agentview_rgb", data=rng.integers(0, 256, (steps, 12, 10, 3), dtype=np.uint8))
                obs.create_dataset("joint_states", data=rng.normal(size=(steps, 7)).astype(np.float32))
            if f == 0:
                h.create_dataset("mask/valid", data=np.array([b"demo_1", b"demo_3"]))
    return folder


def _episodes(path, split="train"):
    builder = tfds.builder_from_directory(path)
    out = []
    for ep in builder.as_dataset(split=split):
        out.append((tfds.as_numpy(ep["episode_metadata"]), list(tfds.as_numpy(ep["steps"]))))
    return builder, out


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in _flat(v, f"{prefix}{k}/").items()}
    return {prefix.rstrip("/"): tree}


def test_two_beam_workers_give_exactly_the_single_process_dataset(tmp_path):
    suite = _write_suite(str(tmp_path / "suite"))
    single = str(tmp_path / "single")
    beam = str(tmp_path / "beam")
    assert convert.main(["--format=hdf5", f"--input={suite}", f"--output={single}", "--name=suite"]) == 0
    assert convert.main(["--format=hdf5", f"--input={suite}", f"--output={beam}", "--name=suite",
                         "--num_workers=2"]) == 0
    b_single, eps_single = _episodes(single)
    b_beam, eps_beam = _episodes(beam)
    assert b_beam.info.features.to_json() == b_single.info.features.to_json()
    assert set(b_beam.info.splits) == set(b_single.info.splits) == {"train", "valid"}
    assert len(eps_beam) == len(eps_single) == 15
    for (meta_a, steps_a), (meta_b, steps_b) in zip(eps_single, eps_beam):
        assert meta_a == meta_b
        assert len(steps_a) == len(steps_b)
        for sa, sb in zip(steps_a, steps_b):
            fa, fb = _flat(sa), _flat(sb)
            assert fa.keys() == fb.keys()
            for key in fa:
                np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
    valid = [m["episode_name"] for m, _ in _episodes(beam, "valid")[1]]
    assert valid == [b"data/demo_1", b"data/demo_3"]


def test_a_malformed_episode_fails_the_pipeline_naming_file_and_episode(tmp_path, capsys):
    suite = _write_suite(str(tmp_path / "suite"), nan_in=(2, 3))
    out = str(tmp_path / "out")
    assert convert.main(["--format=hdf5", f"--input={suite}", f"--output={out}", "--num_workers=2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "task_2.hdf5 episode data/demo_3" in err and "NaN/Inf" in err, err
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.tmp")]
