"""Weighted mixtures from the command line: an RT-1-layout dataset (by name, dict action) and a LIBERO-layout dataset
(by path) train together, each normalized with its own statistics; the tokenizer keeps every member's normalizer;
evaluation reports each member; sampling follows the weights; mismatched action sizes and bad entries fail clearly.
"""

import json
import os
import subprocess

import numpy as np
import pytest

import train_helpers
from data_pipelines import loader, rlds_reader, statistics
from oat_jax import OATTokenizer, load_pretrained
from oat_jax.normalizer import ActionNormalizer
from oat_jax.training import data
from test_data_oxe import write_libero_layout, write_rt1_layout


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds_mix"))
    write_rt1_layout(d, episodes=8)
    write_libero_layout(d, episodes=8)
    write_rt1_layout(d, name="my_dict_robot", episodes=4)  # not registered: needs action_keys
    rlds_reader._open_builder.cache_clear()
    libero_path = os.path.join(d, "libero_10_no_noops", "1.0.0")
    return d, libero_path


def _mixture_cfg(d, mixture, **extra):
    cfg = train_helpers.tiny_config("").data
    cfg.data_dir, cfg.path, cfg.val_fraction = d, mixture, 0.25
    for k, v in extra.items():
        cfg[k] = v
    return cfg


def test_parse_mixture_names_paths_weights_and_errors(data_dir):
    d, libero_path = data_dir
    specs = loader.parse_mixture(f"fractal20220817_data:3,{libero_path}:0.5", d)
    assert [loader.dataset_label(s) for s in specs] == ["fractal20220817_data", "libero_10_no_noops"]
    assert [s.weight for s in specs] == [3.0, 0.5]
    assert specs[0].action_keys == ("world_vector", "rotation_delta", "gripper_closedness_action")
    assert specs[1].path == libero_path and specs[1].action_keys == ()
    assert loader.parse_mixture("fractal20220817_data:0.1.0", d)[0].name == "fractal20220817_data:0.1.0"
    with pytest.raises(ValueError, match=r"config\.data\.path: the weight of 'libero_10_no_noops' is -1"):
        loader.parse_mixture("libero_10_no_noops:-1", d)
    for weights in (("inf", "1"), ("nan", "1")):  # a weight that is not a finite number
        with pytest.raises(ValueError, match=r"weights must be finite and > 0"):
            loader.parse_mixture(f"fractal20220817_data:{weights[0]},{libero_path}:{weights[1]}", d)
    with pytest.raises(ValueError, match=r"add up to more than a float can hold"):
        loader.parse_mixture(f"fractal20220817_data:1e308,{libero_path}:1e308", d)
    with pytest.raises(ValueError, match=r"both named 'libero_10_no_noops'"):
        loader.parse_mixture(f"libero_10_no_noops,{libero_path}", d)
    with pytest.raises(ValueError, match=r"config\.data\.path is empty"):
        loader.parse_mixture(" , ", d)


def test_members_must_agree_on_the_action_size(data_dir):
    d, libero_path = data_dir
    cfg = _mixture_cfg(d, f"fractal20220817_data,{libero_path}", action_keys="")
    assert [m.label for m in data.dataset_members(cfg)] == ["fractal20220817_data", "libero_10_no_noops"]
    # action_keys applies to unregistered members: 4-D my_dict_robot vs 7-D fractal
    bad = _mixture_cfg(d, "fractal20220817_data,my_dict_robot", action_keys="world_vector,gripper_closedness_action")
    with pytest.raises(ValueError, match=r"differ in size \{'fractal20220817_data': 7, 'my_dict_robot': 4\}.*"
                                         r"--config\.data\.action_keys"):
        data.dataset_members(bad)
    both = _mixture_cfg(d, "fractal20220817_data:1", name="fractal20220817_data")
    with pytest.raises(ValueError, match=r"config\.data\.path holds a mixture .*leave config\.data\.name empty"):
        data.dataset_members(both)
    one = _mixture_cfg(d, libero_path)  # one directory: a mixture of one
    assert [(m.label, m.weight) for m in data.dataset_members(one)] == [("libero_10_no_noops", 1.0)]
    with pytest.raises(ValueError, match=r"is a mixture; this run reads one dataset"):
        data.dataset_spec(_mixture_cfg(d, f"{libero_path}:1,fractal20220817_data"))
    assert [loader.is_mixture(t) for t in ("a:2", "a,b", "gs://b/d", "name:1.0.0", "", None, "/x/y")] == [
        True, True, False, False, False, False, False]


def test_in_memory_mixture_sampling_matches_the_weights(data_dir):
    chunks = [np.zeros((50, 4, 2), np.float32), np.ones((7, 4, 2), np.float32), np.full((300, 4, 2), 2, np.float32)]
    weights = [3.0, 1.0, 0.5]
    batches = data.InMemoryBatches(chunks, weights, global_batch=64, rows=np.arange(64), seed=0)
    members = np.concatenate([batches.global_members(s)[0] for s in range(300)])
    p = np.asarray(weights) / sum(weights)
    n = len(members)
    freq = np.bincount(members, minlength=3) / n
    assert np.all(np.abs(freq - p) <= 3 * np.sqrt(p * (1 - p) / n)), (freq, p)
    # every chunk of the small member is drawn, the batch is a fixed function of the step, rows split it
    m, idx = batches.global_members(5)
    assert set(np.concatenate([batches.global_members(s)[1][batches.global_members(s)[0] == 1]
                               for s in range(300)])) == set(range(7))
    np.testing.assert_array_equal(batches.global_members(5)[1], idx)
    half = data.InMemoryBatches(chunks, weights, 64, np.arange(32, 64), seed=0).local_batch(5)["actions"]
    np.testing.assert_array_equal(half, batches.local_batch(5)["actions"][32:])
    np.testing.assert_array_equal(batches.local_batch(5)["actions"][:, 0, 0], m.astype(np.float32))


def test_streamed_mixture_sampling_matches_the_weights(data_dir):
    d, libero_path = data_dir
    specs = loader.parse_mixture(f"fractal20220817_data:3,{libero_path}:1", d)
    ds = loader.make_chunk_dataset(specs, split="all", horizon=4, batch_size=256, seed=3, with_episode_ids=True,
                                   shuffle_buffer=64)
    index = np.concatenate([b["dataset_index"] for b in ds.take(12).as_numpy_iterator()])
    n, p = len(index), 0.75
    assert abs(np.mean(index == 0) - p) <= 3 * np.sqrt(p * (1 - p) / n)


def test_normalize_rows_uses_each_rows_normalizer():
    rng = np.random.default_rng(0)
    a = ActionNormalizer.fit(rng.normal(size=(100, 3)), "limits")
    b = ActionNormalizer.fit(rng.normal(5, 3, size=(100, 3)), "quantile")
    x = rng.normal(2, 4, size=(6, 5, 3)).astype(np.float32)
    member = np.array([0, 1, 1, 0, 1, 0])
    out = data.normalize_rows(x, member, [a, b])
    for i, m in enumerate(member):
        np.testing.assert_array_equal(out[i], (a, b)[m].normalize(x[i]))


def test_mixture_trains_from_the_cli_with_per_dataset_normalizers(data_dir, tmp_path):
    d, libero_path = data_dir
    workdir = str(tmp_path / "mix")
    cmd = train_helpers.train_command(
        workdir, f"fractal20220817_data:2,{libero_path}:1", f"--config.data.data_dir={d}",
        "--config.data.val_fraction=0.25", "--config.normalizer.unnormalized_dims=6")
    env = train_helpers.subprocess_env(num_devices=1)
    env.pop("TFDS_DATA_DIR", None)
    result = subprocess.run(cmd, cwd=train_helpers.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    tok = OATTokenizer.load(workdir)
    assert tok.datasets == ["fractal20220817_data", "libero_10_no_noops"] and tok.action_dim == 7
    specs = loader.parse_mixture(f"fractal20220817_data,{libero_path}", d)
    for label, spec in zip(tok.datasets, specs):  # each member's own train statistics, gripper dim left raw
        stats = statistics.get_dataset_statistics(spec, split="train", val_fraction=0.25, split_seed=0)
        mask = [True] * 6 + [False]
        expected = ActionNormalizer.from_stats(stats["action"], "limits", mask=mask)
        np.testing.assert_array_equal(tok.dataset_normalizers[label].scale, expected.scale)
        np.testing.assert_array_equal(tok.dataset_normalizers[label].offset, expected.offset)
    assert tok.dataset_normalizers["fractal20220817_data"].scale[6] == 1.0
    assert not np.array_equal(tok.dataset_normalizers["fractal20220817_data"].scale,
                              tok.dataset_normalizers["libero_10_no_noops"].scale)
    np.testing.assert_array_equal(tok.normalizer.scale, tok.dataset_normalizers["fractal20220817_data"].scale)

    libero = OATTokenizer.load(workdir, dataset="libero_10_no_noops")
    assert libero.normalizer is libero.dataset_normalizers["libero_10_no_noops"]
    chunk = np.random.default_rng(0).uniform(-1, 1, (2, tok.horizon, 7)).astype(np.float32)
    np.testing.assert_array_equal(libero.tokenize(chunk)[0],
                                  tok.for_dataset("libero_10_no_noops").tokenize(chunk)[0])
    with pytest.raises(KeyError, match="No normalizer for dataset 'bridge_orig'"):
        tok.for_dataset("bridge_orig")

    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    for label in tok.datasets:
        assert np.isfinite(final[f"{label}/mse_norm/k{tok.num_tokens}"])
    assert os.path.exists(os.path.join(workdir, "rate_distortion.png"))
    # a checkpoint step carries the members' normalizers too
    step_tok = load_pretrained(workdir, step="latest").tokenizer
    assert step_tok.datasets == tok.datasets
    np.testing.assert_array_equal(step_tok.for_dataset("libero_10_no_noops").normalizer.offset,
                                  libero.normalizer.offset)
    # resuming with other training data is refused before training
    again = [f"--config.data.path={libero_path}:1,fractal20220817_data:1" if c.startswith("--config.data.path")
             else c for c in cmd]
    result = subprocess.run(again + ["--config.train.num_steps=20"], cwd=train_helpers.REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr  # a config error: one clear line
    assert "error: The run in" in result.stderr
    assert "was started on the mixture ['fractal20220817_data', 'libero_10_no_noops']" in result.stderr
