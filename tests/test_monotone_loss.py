"""Short rows decoded at every length below N: weighting by the nested-dropout distribution, and the hinge that adds
weight to a prefix decoding worse than the one before it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from oat_jax.decoder import keep_length_distribution
from oat_jax.model import OATModel
from oat_jax.training.tokenizer_step import (check_loss_config, monotone_penalty, reconstruction_loss,
                                             split_reconstruction_loss)
from test_train_prefix_loss import TINY, _batch, _trained_like


def test_penalty_is_zero_in_order_and_the_hinge_out_of_order():
    ordered = jnp.asarray([0.05, 0.04, 0.03], jnp.float32)
    assert float(monotone_penalty(ordered, 0.0)) == 0.0
    # 0.04 > 0.9 * 0.05 is false, 0.03 > 0.9 * 0.04 = 0.036 is false: still zero with a 10 % margin
    assert float(monotone_penalty(ordered, 0.1)) == 0.0
    bumped = jnp.asarray([0.05, 0.03, 0.036, 0.02], jnp.float32)
    np.testing.assert_allclose(float(monotone_penalty(bumped, 0.0)), 0.006, rtol=1e-5)
    np.testing.assert_allclose(float(monotone_penalty(bumped, 0.1)), 0.036 - 0.027 + 0.0, rtol=1e-5)


def test_penalty_gradient_weighs_only_the_longer_prefix_of_a_bump():
    bumped = jnp.asarray([0.05, 0.03, 0.036, 0.02], jnp.float32)
    grad = np.asarray(jax.grad(lambda x: monotone_penalty(x, 0.0))(bumped))
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, 0.0])  # k = 3 above k = 2: only k = 3 is pushed down


@pytest.mark.parametrize("weight,margin", [(0.0, 0.0), (0.5, 0.05)])
def test_split_loss_with_distribution_weights_and_hinge_by_hand(weight, margin):
    params = _trained_like(TINY)
    model, x, rng = OATModel(TINY), _batch(TINY, batch=8, seed=4), jax.random.key(5)
    short = jnp.broadcast_to(jnp.arange(1, 4, dtype=jnp.int32), (3, 3))  # every length below N = 4
    full_rng, short_rng = jax.random.split(rng)
    full_loss = float(reconstruction_loss(model, params, x[3:], jnp.full((5,), 4, jnp.int32), full_rng))
    columns = np.asarray([float(reconstruction_loss(model, params, x[:3], short[:, j], short_rng)) for j in range(3)])
    probs = np.asarray([0.6, 0.3, 0.1], np.float32)
    hinge = sum(max(0.0, columns[j] - (1 - margin) * columns[j - 1]) for j in (1, 2))
    expected = (5 * full_loss + 3 * (probs @ columns + weight * hinge)) / 8
    got = float(split_reconstruction_loss(model, params, x, short, rng, jnp.asarray(probs), weight, margin))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    uniform = float(split_reconstruction_loss(model, params, x, short, rng))
    np.testing.assert_allclose(uniform, (5 * full_loss + 3 * columns.mean()) / 8, rtol=1e-5)
    assert got != pytest.approx(uniform, rel=1e-4)  # the weights do matter


@pytest.mark.parametrize("monotone_weight", [0.0, 2.0])
def test_train_step_weighs_short_columns_by_the_distribution(monotone_weight):
    """With short_weighting='distribution', the train step weighs the short columns by P(k | k < N), plus the hinge
    with monotone_weight > 0."""
    import optax

    from oat_jax.normalizer import Normalizer
    from oat_jax.training.tokenizer_step import init_train_state, make_train_step, split_rows

    config = TINY.replace(nested_dropout="power", nested_dropout_power=-1.5, nested_dropout_full=0.0)
    model, tx = OATModel(config), optax.sgd(1e-2)
    ema = ml_collections.ConfigDict(dict(power=0.75, max_decay=0.999))
    x = _batch(TINY, batch=16, seed=6)
    cfg = ml_collections.ConfigDict(dict(prefix_samples=1, full_length_weight=0.0, short_samples=-1,
                                         short_weighting="distribution", monotone_weight=monotone_weight,
                                         monotone_margin=0.05))
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-2), Normalizer.identity(3), ema,
                                   loss_cfg=cfg))
    state = init_train_state(model, tx, 0)
    params = _trained_like(config)
    state = state.replace(params=params)
    _, metrics = step(state, {"actions": x})
    drop_rng, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
    rows = split_rows(16, config, cfg)
    values, probs = keep_length_distribution(4, "power", -1.5)
    p = probs[values < 4] / probs[values < 4].sum()
    short = jnp.broadcast_to(jnp.arange(1, 4, dtype=jnp.int32), (rows, 3))
    expected = float(split_reconstruction_loss(model, params, x, short, drop_rng, jnp.asarray(p, jnp.float32),
                                               monotone_weight, 0.05))
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    if monotone_weight:  # these params decode some k worse than k - 1, so the hinge is active
        plain = float(split_reconstruction_loss(model, params, x, short, drop_rng, jnp.asarray(p, jnp.float32)))
        assert expected > plain * (1 + 1e-4)


def test_options_need_every_short_length():
    for fields, match in [(dict(short_samples=4, short_weighting="distribution"), "short_samples=-1"),
                          (dict(short_samples=4, monotone_weight=0.1), "short_samples=-1"),
                          (dict(short_samples=-1, short_weighting="sampled"), "short_weighting"),
                          (dict(short_samples=-1, monotone_weight=-1.0), "monotone_weight"),
                          (dict(short_samples=-1, monotone_weight=0.1, monotone_margin=1.0), "monotone_margin")]:
        cfg = ml_collections.ConfigDict(dict(prefix_samples=1, full_length_weight=0.0, **fields))
        with pytest.raises(ValueError, match=match):
            check_loss_config(cfg, 4)
    check_loss_config(ml_collections.ConfigDict(dict(short_samples=-1, short_weighting="distribution",
                                                     monotone_weight=0.1, monotone_margin=0.05)), 4)
