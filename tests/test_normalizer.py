"""ActionNormalizer: the three modes, constant dimensions, statistics-dict input, JSON round trip, jit safety."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oat_jax import ActionNormalizer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, 4)) * np.array([1.0, 5.0, 0.1, 0.0]) + np.array([0.0, 3.0, -2.0, 0.7])
    x[:, 3] += 1e-6 * rng.normal(size=500)  # a (numerically) constant dimension
    return x.astype(np.float32)


def test_limits_maps_min_max_to_minus_one_one_and_constant_dims_to_zero():
    x = _data()
    norm = ActionNormalizer.fit(x, "limits")
    y = norm.normalize(x)
    np.testing.assert_allclose(y[:, :3].min(0), -1.0, atol=1e-5)
    np.testing.assert_allclose(y[:, :3].max(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(y[:, 3], 0.0, atol=1e-5)
    lo, hi = x.min(0).astype(np.float64), x.max(0).astype(np.float64)
    np.testing.assert_allclose(norm.scale[:3], 2.0 / (hi - lo)[:3], rtol=1e-6)
    np.testing.assert_allclose(norm.offset[:3], (-1.0 - 2.0 / (hi - lo) * lo)[:3], rtol=1e-5)
    assert norm.scale[3] == 1.0 and norm.offset[3] == np.float32(-lo[3])
    np.testing.assert_allclose(norm.unnormalize(y), x, atol=1e-5)


def test_quantile_mode_maps_q01_q99_and_clips():
    x = _data()
    norm = ActionNormalizer.fit(x, "quantile")
    y = norm.normalize(x)
    assert y.min() == -1.0 and y.max() == 1.0
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    np.testing.assert_allclose(norm.normalize(np.stack([q01, q99]))[:, :3], [[-1, -1, -1], [1, 1, 1]], atol=1e-5)
    inside = (x[:, :3] >= q01[:3]) & (x[:, :3] <= q99[:3])
    np.testing.assert_allclose(norm.unnormalize(y)[:, :3][inside], x[:, :3][inside], atol=1e-4)
    assert np.mean(np.abs(y[:, :3]) == 1.0) < 0.05  # only the ~2% tails are clipped


def test_gaussian_mode_standardises():
    x = _data()
    y = ActionNormalizer.fit(x, "gaussian").normalize(x)
    np.testing.assert_allclose(y[:, :3].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y[:, :3].std(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(y[:, 3], 0.0, atol=1e-4)


def test_from_stats_reads_the_design_json_format():
    stats = {"action": {"min": [-1.0, 0.0], "max": [1.0, 4.0], "mean": [0.0, 2.0], "std": [0.5, 1.0],
                        "q01": [-0.9, 0.1], "q99": [0.9, 3.9], "count": 100},
             "num_episodes": 3, "num_transitions": 100, "fingerprint": "abc"}
    stats = json.loads(json.dumps(stats))
    norm = ActionNormalizer.from_stats(stats["action"], mode="limits")
    np.testing.assert_allclose(norm.normalize(np.array([[-1.0, 0.0], [1.0, 4.0]])), [[-1, -1], [1, 1]])
    assert ActionNormalizer.from_stats(stats, "limits").to_dict() == norm.to_dict()  # whole dict accepted too
    np.testing.assert_allclose(ActionNormalizer.from_stats(stats["action"], "gaussian").normalize(
        np.array([0.5, 3.0])), [1.0, 1.0])
    with pytest.raises(ValueError, match="missing \\['q01', 'q99'\\]"):
        ActionNormalizer.from_stats({"min": [0.0], "max": [1.0]}, "quantile")
    with pytest.raises(ValueError, match="mode"):
        ActionNormalizer.from_stats(stats["action"], "minmax")


@pytest.mark.parametrize("mode", ["limits", "quantile", "gaussian", "identity"])
def test_json_round_trip_is_bit_identical(mode):
    norm = ActionNormalizer.fit(_data(), mode) if mode != "identity" else ActionNormalizer.identity(4)
    back = ActionNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert back.mode == mode
    np.testing.assert_array_equal(back.scale, norm.scale)
    np.testing.assert_array_equal(back.offset, norm.offset)
    assert back.stats.keys() == norm.stats.keys()
    x = _data(1)
    np.testing.assert_array_equal(back.normalize(x), norm.normalize(x))


def test_normalize_is_jit_safe_and_matches_numpy():
    norm = ActionNormalizer.fit(_data(), "quantile")
    x = _data(2)
    y_jax = jax.jit(norm.normalize)(jnp.asarray(x))
    assert isinstance(y_jax, jax.Array) and isinstance(norm.normalize(x), np.ndarray)
    np.testing.assert_allclose(y_jax, norm.normalize(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(norm.unnormalize)(y_jax), norm.unnormalize(np.asarray(y_jax)), rtol=1e-6)


def test_identity_and_bad_inputs():
    x = _data()
    np.testing.assert_array_equal(ActionNormalizer.identity(4).normalize(x), x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ActionNormalizer.fit(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="non-empty"):
        ActionNormalizer.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="scale and offset"):
        ActionNormalizer("limits", np.ones(3), np.zeros(2))
    with pytest.raises(ValueError, match="missing"):
        ActionNormalizer.from_dict({"mode": "limits"})
