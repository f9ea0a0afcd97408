"""Statistics files of octo and openpi load and normalize as those projects do; ours carry their keys too; a mask
(octo's action_normalization_mask, or config.normalizer.unnormalized_dims) leaves dimensions such as the gripper
raw."""

import json

import numpy as np
import pytest

import train_helpers
from data_pipelines import statistics
from oat_jax import load_pretrained
from oat_jax.normalizer import ActionNormalizer, Normalizer
from oat_jax.training.tokenizer import trainer
from train_helpers import compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)

RNG = np.random.default_rng(0)
X = RNG.normal(0.2, 0.7, (500, 7)).astype(np.float32)
X[:, 6] = RNG.choice([0.0, 1.0], 500)  # a gripper already in [0, 1]
MASK = [True] * 6 + [False]


def _octo_file():
    q = lambda p: np.quantile(X, p, axis=0).tolist()  # noqa: E731
    return {"action": {"mean": X.mean(0).tolist(), "std": X.std(0).tolist(), "max": X.max(0).tolist(),
                       "min": X.min(0).tolist(), "p01": q(0.01), "p99": q(0.99), "mask": MASK},
            "proprio": {"mean": [0.0], "std": [1.0]}, "num_transitions": 500, "num_trajectories": 5}


def test_octo_bounds_and_normal_match_octo(tmp_path):
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps(_octo_file()))
    stats = json.loads(path.read_text())
    a = stats["action"]
    low, high, mean, std = (np.asarray(a[k]) for k in ("p01", "p99", "mean", "std"))
    octo_bounds = np.where(MASK, np.clip(2 * (X - low) / (high - low + 1e-8) - 1, -1, 1), X)
    octo_normal = np.where(MASK, (X - mean) / (std + 1e-8), X)
    np.testing.assert_allclose(ActionNormalizer.from_stats(stats, "bounds").normalize(X), octo_bounds, atol=1e-5)
    np.testing.assert_allclose(ActionNormalizer.from_stats(stats, "normal").normalize(X), octo_normal, atol=1e-5)
    norm = ActionNormalizer.from_stats(stats, "bounds")
    inside = np.all((X >= low) & (X <= high), axis=1)  # the round trip is exact where nothing was clipped
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(X[inside])), X[inside], atol=1e-5)
    restored = ActionNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored.normalize(X), norm.normalize(X))


def test_openpi_norm_stats_match_openpi():
    q01, q99 = np.quantile(X, 0.01, axis=0), np.quantile(X, 0.99, axis=0)
    stats = {"norm_stats": {"actions": {"mean": X.mean(0).tolist(), "std": X.std(0).tolist(), "q01": q01.tolist(),
                                        "q99": q99.tolist()},
                            "state": {"mean": [0.0], "std": [1.0], "q01": [0.0], "q99": [1.0]}}}
    inside = X[np.all((X >= q01) & (X <= q99), axis=1)]  # openpi does not clip; ours does in quantile mode
    openpi_quantile = (inside - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0
    openpi_z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    np.testing.assert_allclose(ActionNormalizer.from_stats(stats, "quantile").normalize(inside), openpi_quantile,
                               atol=1e-4)
    np.testing.assert_allclose(ActionNormalizer.from_stats(stats, "gaussian").normalize(X), openpi_z, atol=1e-4)


def test_our_statistics_carry_octo_keys(tiny_dataset):  # noqa: F811
    stats = statistics.compute_dataset_statistics(tiny_dataset)
    a = stats["action"]
    assert a["p01"] == a["q01"] and a["p99"] == a["q99"]
    octo_style = {"action": {k: a[k] for k in ("mean", "std", "min", "max", "p01", "p99")}}
    np.testing.assert_array_equal(ActionNormalizer.from_stats(octo_style, "bounds").scale,
                                  ActionNormalizer.from_stats(stats, "quantile").scale)


def test_mask_length_is_checked():
    with pytest.raises(ValueError, match="mask has 2 entries for 7"):
        ActionNormalizer.from_stats(_octo_file(), "limits", mask=[True, False])


@pytest.mark.slow  # about 60 s on 2 cores: two training runs
def test_unnormalized_dims_in_training_and_load_pretrained(tmp_path, tiny_dataset, compilation_cache):  # noqa: F811
    config = train_helpers.tiny_config(tiny_dataset, **{"normalizer.unnormalized_dims": "2"})
    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(config, workdir)
    for tok in (load_pretrained(workdir).tokenizer, load_pretrained(workdir, step=4).tokenizer):
        assert tok.normalizer.scale[2] == 1.0 and tok.normalizer.offset[2] == 0.0
        assert tok.normalizer.scale[0] != 1.0


@pytest.mark.parametrize("stats, mode, message", [
    ({"min": [0.0, 1.0], "max": [1.0, -1.0]}, "limits", r"min > max in dimension\(s\) \[1\]"),
    ({"q01": [2.0, 0.0], "q99": [1.0, 1.0]}, "quantile", r"q01 > q99 in dimension\(s\) \[0\]"),
    ({"mean": [0.0, 0.0], "std": [1.0, -0.5]}, "gaussian", r"negative std in dimension\(s\) \[1\]"),
    ({"min": [0.0, 0.0], "max": [1.0, 1.0, 1.0]}, "limits", r"one length, got shapes"),
    ({"min": [0.0, float("nan")], "max": [1.0, 1.0]}, "limits", r"'min' is NaN or Inf in dimension\(s\) \[1\]"),
    ({"min": ["a", "b"], "max": [1.0, 1.0]}, "limits", r"'min' is not a list of numbers"),
])
def test_inconsistent_statistics_are_refused_naming_the_key_and_dimension(stats, mode, message):
    """Statistics read from a file are checked before they become a scale: a swapped or damaged file is an error,
    never a silent scale of 1."""
    with pytest.raises(ValueError, match=message):
        Normalizer.from_stats(stats, mode)
