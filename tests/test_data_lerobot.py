"""LeRobot datasets (v2.1 and v3.0, one camera each) convert to RLDS from the command line with the source's actions,
states, per-frame instructions and camera frames (decoded at the frame timestamps), train a tokenizer by path, and
give their statistics to `Normalizer.from_stats`; a corrupt parquet file, a truncated MP4 or a frame whose timestamp
the video does not hold fail naming the file (and episode and camera) with nothing written."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import lerobot_fixtures as fixtures
import train_helpers
from data_pipelines import convert, lerobot
from oat_jax import Normalizer
from train_helpers import compilation_cache  # noqa: F401  (pytest fixture)

pytest.importorskip("av")
pytest.importorskip("pyarrow")

WRITERS = {"v2.1": fixtures.write_v21, "v3.0": fixtures.write_v30}


def _read_rlds(path):
    builder = tfds.builder_from_directory(path)
    return [list(tfds.as_numpy(ep["steps"])) for ep in builder.as_dataset(split="train")]


def _assert_frames_match(decoded: np.ndarray, source: np.ndarray, what: str) -> None:
    """Every decoded frame is closest to its own source frame (not a neighbour's) and close to it."""
    d = np.abs(decoded.astype(np.float32)[:, None] - source.astype(np.float32)[None]).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(d.argmin(axis=1), np.arange(len(source)), err_msg=f"{what}: frames misaligned")
    assert np.diag(d).max() < 9.0, f"{what}: decoded frames far from the source ({np.diag(d).max():.1f} / 255)"


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_dataset_converts_from_the_cli_and_trains_a_tokenizer(tmp_path, version, compilation_cache, capsys):  # noqa: F811
    source = WRITERS[version](str(tmp_path / "lerobot"))
    out = str(tmp_path / "rlds")
    assert convert.main(["--format=lerobot", f"--input={tmp_path / 'lerobot'}", f"--output={out}"]) == 0, \
        capsys.readouterr().err
    episodes = _read_rlds(out)
    assert len(episodes) == len(source["episodes"])
    for e, (steps, src) in enumerate(zip(episodes, source["episodes"])):
        np.testing.assert_array_equal(np.stack([s["action"] for s in steps]), src["arrays"]["action"])
        np.testing.assert_array_equal(np.stack([s["observation"]["state"] for s in steps]),
                                      src["arrays"]["observation.state"])
        np.testing.assert_array_equal(np.stack([s["reward"] for s in steps]), src["arrays"]["next.reward"])
        assert [s["language_instruction"].decode() for s in steps] == src["tasks"]
        _assert_frames_match(np.stack([s["observation"]["images_top"] for s in steps]), src["frames"],
                             f"{version} episode {e} camera")
        if src.get("wrist") is not None:  # an `image` feature: PNG in the parquet, JPEG in RLDS by default
            wrist = np.stack([s["observation"]["images_wrist"] for s in steps]).astype(np.float32)
            assert np.abs(wrist - src["wrist"]).mean() < 6.0
    assert len({s["language_instruction"] for steps in episodes for s in steps}) > 1  # tasks differ by episode

    from oat_jax import OATTokenizer
    from oat_jax.training.tokenizer import trainer as tokenizer_trainer

    workdir = str(tmp_path / "tok")
    tokenizer_trainer.train_and_evaluate(train_helpers.tiny_config(out), workdir)
    tok = OATTokenizer.load(workdir)
    assert tok.action_dim == fixtures.ACTION_DIM
    tokens, _ = tok.tokenize(source["episodes"][0]["arrays"]["action"][None, :tok.horizon])
    assert tokens.shape == (1, tok.num_tokens)


def test_per_frame_tasks_of_an_episode_are_kept(tmp_path):
    source = fixtures.write_v21(str(tmp_path / "lerobot"), with_camera=False)
    episodes = list(lerobot.read_lerobot(str(tmp_path / "lerobot")))
    assert episodes[1].language == source["episodes"][1]["tasks"]  # this episode switches task half-way
    assert len(set(episodes[1].language)) == 2 and isinstance(episodes[0].language, str)
    assert "images_top" not in episodes[0].observation  # an image-free dataset converts too
    assert episodes[2].metadata == {"episode_index": 2, "task": source["tasks"][0]}


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_statistics_read_as_normalization_statistics(tmp_path, version):
    source = WRITERS[version](str(tmp_path / "lerobot"))
    actions = np.concatenate([ep["arrays"]["action"] for ep in source["episodes"]])
    stats = lerobot.read_stats(str(tmp_path / "lerobot"))
    assert stats["action"]["count"] == [len(actions)]
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-4, atol=1e-6)  # pooled over episodes
    modes = ("limits", "gaussian") + (("quantile",) if version == "v3.0" else ())
    for mode in modes:
        expected, got = Normalizer.fit(actions, mode), Normalizer.from_stats(stats, mode)
        np.testing.assert_allclose(got.normalize(actions), expected.normalize(actions), atol=1e-4, err_msg=mode)
    if version == "v3.0":  # meta/stats.json itself, as LeRobot writes it
        with open(tmp_path / "lerobot" / "meta" / "stats.json") as f:
            raw = json.load(f)
        np.testing.assert_allclose(Normalizer.from_stats(raw, "quantile").normalize(actions),
                                   Normalizer.fit(actions, "quantile").normalize(actions), atol=1e-4)


def _leftovers(parent):
    return [n for n in os.listdir(parent) if n.startswith(".rlds") or n == "rlds"]


def test_a_corrupt_parquet_file_fails_naming_it_with_nothing_written(tmp_path, capsys):
    fixtures.write_v30(str(tmp_path / "lerobot"))
    data = tmp_path / "lerobot" / "data" / "chunk-000" / "file-001.parquet"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 64] = b"\0" * 64
    data.write_bytes(bytes(raw[: len(raw) - 20]))  # damaged and without its footer
    assert convert.main(["--format=lerobot", f"--input={tmp_path / 'lerobot'}",
                         f"--output={tmp_path / 'rlds'}"]) == 1
    err = capsys.readouterr().err
    assert str(data) in err and "parquet" in err, err
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated", "shifted"])
def test_a_video_that_lacks_a_frame_fails_naming_episode_camera_and_file(tmp_path, capsys, damage):
    fixtures.write_v30(str(tmp_path / "lerobot"))
    video = tmp_path / "lerobot" / "videos" / fixtures.CAMERA / "chunk-000" / "file-001.mp4"
    if damage == "truncated":  # a copy cut short: the MP4's index (at its end) is gone
        video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    else:  # the metadata points half a frame away from any frame of episode 4 (the second episode of file 1)
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = tmp_path / "lerobot" / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
        table = pq.read_table(meta)
        column = f"videos/{fixtures.CAMERA}/from_timestamp"
        shifted = [t + (0.5 / fixtures.FPS if i == 4 else 0.0) for i, t in enumerate(table.column(column).to_pylist())]
        pq.write_table(table.set_column(table.column_names.index(column), column, pa.array(shifted)), meta)
    assert convert.main(["--format=lerobot", f"--input={tmp_path / 'lerobot'}",
                         f"--output={tmp_path / 'rlds'}"]) == 1
    err = capsys.readouterr().err
    assert str(video) in err and f"camera {fixtures.CAMERA}" in err, err
    if damage == "shifted":
        assert "episode 4" in err and "tolerance_s" in err, err
    assert _leftovers(tmp_path) == []


def test_unknown_version_and_missing_action_are_clear_errors(tmp_path):
    fixtures.write_v21(str(tmp_path / "lerobot"), lengths=(9,), with_camera=False)
    info_path = tmp_path / "lerobot" / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    with pytest.raises(lerobot.EpisodeError, match="--action_key"):
        list(lerobot.read_lerobot(str(tmp_path / "lerobot"), action_key="actions"))
    info_path.write_text(json.dumps(dict(info, codebase_version="v1.6")))
    with pytest.raises(lerobot.EpisodeError, match="v1.6"):
        list(lerobot.read_lerobot(str(tmp_path / "lerobot")))
    with pytest.raises(lerobot.EpisodeError, match="meta/info.json"):
        list(lerobot.read_lerobot(str(tmp_path)))
