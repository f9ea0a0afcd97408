"""Conversion on Apache Beam: a folder of HDF5 files converted with two worker processes equals the single-process
conversion array for array, split for split and in its stored statistics; a malformed episode fails the pipeline
with the message naming its file and episode, and leaves no output directory; the Meta-World generator on Beam
simulates the same dataset as in one process."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import convert, statistics

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


def _assert_same_episodes(eps_a, eps_b):
    assert len(eps_a) == len(eps_b)
    for (meta_a, steps_a), (meta_b, steps_b) in zip(eps_a, eps_b):
        assert meta_a == meta_b
        assert len(steps_a) == len(steps_b)
        for sa, sb in zip(steps_a, steps_b):
            fa, fb = _flat(sa), _flat(sb)
            assert fa.keys() == fb.keys()
            for key in fa:
                np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def _stored_statistics(path):
    """The statistics stored with the dataset at `path` (not recomputed: the cache must sit in `path`)."""
    stats = statistics.get_dataset_statistics(path)
    assert os.path.dirname(stats["cache_path"]) == path
    return {k: v for k, v in stats.items() if k not in ("cache_path", "fingerprint")}


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
    _assert_same_episodes(eps_single, eps_beam)
    # the Beam statistics step gives exactly the single-process pass's statistics (and a fresh computation's)
    assert _stored_statistics(beam) == _stored_statistics(single) == statistics.compute_dataset_statistics(beam)
    valid = [m["episode_name"] for m, _ in _episodes(beam, "valid")[1]]
    assert valid == [b"data/demo_1", b"data/demo_3"]


@pytest.mark.slow  # about 40 s on 2 cores: a LeRobot v3 conversion twice, two Beam workers (the v2.1 one runs in CI)
def test_lerobot_v3_on_beam_gives_the_single_process_dataset(tmp_path):
    """Work items of two episodes split the v3.0 data and video files (several episodes each) between workers; each
    reads only its episodes' rows and frames."""
    pytest.importorskip("av")
    import lerobot_fixtures

    lerobot_fixtures.write_v30(str(tmp_path / "lerobot"))
    single, beam = str(tmp_path / "single"), str(tmp_path / "beam")
    assert convert.main(["--format=lerobot", f"--input={tmp_path / 'lerobot'}", f"--output={single}", "--name=lr"]) == 0
    from data_pipelines.beam_convert import convert_beam

    convert_beam("lerobot", str(tmp_path / "lerobot"), beam, name="lr", num_workers=2, episodes_per_item=2)
    _, eps_single = _episodes(single)
    _, eps_beam = _episodes(beam)
    assert len(eps_single) == 5
    _assert_same_episodes(eps_single, eps_beam)
    assert _stored_statistics(beam) == _stored_statistics(single)


def test_a_malformed_episode_fails_the_pipeline_naming_file_and_episode(tmp_path, capsys):
    suite = _write_suite(str(tmp_path / "suite"), nan_in=(2, 3))
    out = str(tmp_path / "out")
    assert convert.main(["--format=hdf5", f"--input={suite}", f"--output={out}", "--num_workers=2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "task_2.hdf5 episode data/demo_3" in err and "NaN/Inf" in err, err
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.tmp")]


@pytest.mark.slow  # about 25 s on 2 cores: simulates 4 episodes twice, starts two Beam workers
def test_metaworld_generator_on_beam_simulates_the_single_process_dataset(tmp_path):
    pytest.importorskip("metaworld")
    from data_pipelines import metaworld

    args = ["--tasks=reach-v3,button-press-topdown-v3", "--episodes_per_task=2", "--seed=5"]
    assert metaworld.main(args + [f"--output={tmp_path / 'single'}"]) == 0
    assert metaworld.main(args + [f"--output={tmp_path / 'beam'}", "--num_workers=2"]) == 0
    b_single, eps_single = _episodes(str(tmp_path / "single"))
    b_beam, eps_beam = _episodes(str(tmp_path / "beam"))
    assert b_beam.name == b_single.name == metaworld.DATASET_NAME
    assert b_beam.info.description == b_single.info.description
    assert b_beam.info.features.to_json() == b_single.info.features.to_json()
    assert [m["task"] for m, _ in eps_beam] == [b"reach-v3"] * 2 + [b"button-press-topdown-v3"] * 2
    _assert_same_episodes(eps_single, eps_beam)
    assert _stored_statistics(str(tmp_path / "beam")) == _stored_statistics(str(tmp_path / "single"))
