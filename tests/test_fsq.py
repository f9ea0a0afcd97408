"""FSQ: vocabulary size, index<->code bijection, grid membership, straight-through gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oat_jax import OATConfig, fsq

LEVEL_SETS = [(8, 5, 5, 5), (8, 6, 5), (3, 4, 2), (7,)]


def test_vocab_size_is_product_of_levels():
    assert fsq.vocab_size((8, 5, 5, 5)) == 1000
    assert fsq.vocab_size((8, 6, 5)) == 240
    assert OATConfig().vocab_size == 1000
    assert OATConfig(levels=(8, 6, 5)).vocab_size == 240
    assert OATConfig(levels=(8, 6, 5)).latent_dim == 3


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_every_index_round_trips_and_codes_are_distinct(levels):
    n = fsq.vocab_size(levels)
    idx = jnp.arange(n)
    codes = fsq.indices_to_codes(idx, levels)
    assert codes.shape == (n, len(levels)) and codes.dtype == jnp.float32
    np.testing.assert_array_equal(fsq.codes_to_indices(codes, levels), np.arange(n))
    assert len(np.unique(np.asarray(codes), axis=0)) == n
    assert float(jnp.min(codes)) >= -1.0 and float(jnp.max(codes)) <= 1.0


def test_index_digit_order_channel_zero_is_least_significant():
    levels = (8, 5, 5, 5)
    # digits (d0, d1, d2, d3) -> d0 + 8 d1 + 40 d2 + 200 d3; the centre code (0, 0, 0, 0) has digits (4, 2, 2, 2).
    assert int(fsq.codes_to_indices(jnp.zeros(4), levels)) == 4 + 8 * 2 + 40 * 2 + 200 * 2
    np.testing.assert_allclose(fsq.indices_to_codes(jnp.array(1), levels), [-0.75, -1.0, -1.0, -1.0])
    np.testing.assert_allclose(fsq.indices_to_codes(jnp.array(8), levels), [-1.0, -0.5, -1.0, -1.0])


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_quantized_codes_lie_on_the_grid_and_reach_every_level(levels):
    z = jax.random.normal(jax.random.key(0), (20000, len(levels))) * 3.0
    z = jnp.concatenate([z, jnp.full((1, len(levels)), 1e4), jnp.full((1, len(levels)), -1e4)])
    codes = np.asarray(fsq.quantize(z, levels))
    half = np.array(levels) // 2
    digits = codes * half + half
    np.testing.assert_allclose(digits, np.round(digits), atol=1e-5)
    for i, level in enumerate(levels):
        assert set(np.round(digits[:, i]).astype(int)) == set(range(level))
    tokens = np.asarray(fsq.codes_to_indices(codes, levels))
    assert tokens.min() >= 0 and tokens.max() < fsq.vocab_size(levels)


def test_zero_latent_is_the_centre_code():
    np.testing.assert_array_equal(fsq.quantize(jnp.zeros((2, 4)), (8, 5, 5, 5)), np.zeros((2, 4)))


def test_bound_rounds_even_and_odd_levels_to_the_spec_ranges():
    z = jnp.linspace(-50, 50, 2001)[:, None] * jnp.ones((1, 2))
    rounded = np.round(np.asarray(fsq.bound(z, (8, 5))))
    assert rounded[:, 0].min() == -4 and rounded[:, 0].max() == 3
    assert rounded[:, 1].min() == -2 and rounded[:, 1].max() == 2


def test_gradient_passes_straight_through_rounding():
    levels = (8, 5, 5, 5)
    z = jax.random.normal(jax.random.key(1), (16, 4))
    w = jax.random.normal(jax.random.key(2), (16, 4))
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(fsq.round_ste(x) * w))(z), w, rtol=1e-6)
    half = np.array(levels) // 2
    g_quant = jax.grad(lambda x: jnp.sum(fsq.quantize(x, levels) * w))(z)
    g_bound = jax.grad(lambda x: jnp.sum(fsq.bound(x, levels) * w))(z)
    np.testing.assert_allclose(g_quant, g_bound / half, rtol=1e-5)
    assert np.all(np.abs(np.asarray(g_quant)) > 0)


def test_out_of_range_ids_still_map_to_grid_codes():
    levels = (8, 6, 5)
    codes = fsq.indices_to_codes(jnp.array([-1, 240, 10**6]), levels)
    back = np.asarray(fsq.codes_to_indices(codes, levels))
    assert np.all((back >= 0) & (back < 240))


def test_fsq_module_matches_functions():
    z = jax.random.normal(jax.random.key(3), (2, 8, 3))
    codes, tokens = fsq.FSQ((8, 6, 5)).apply({}, z)
    np.testing.assert_array_equal(codes, fsq.quantize(z, (8, 6, 5)))
    np.testing.assert_array_equal(tokens, fsq.codes_to_indices(codes, (8, 6, 5)))
    assert tokens.dtype == jnp.int32 and tokens.shape == (2, 8)


@pytest.mark.parametrize("levels", [(), (8, 1), (0,)])
def test_bad_levels_are_rejected(levels):
    with pytest.raises(ValueError, match="levels"):
        fsq.quantize(jnp.zeros((1, max(len(levels), 1))), levels)
    with pytest.raises(ValueError, match="levels"):
        OATConfig(levels=levels)
