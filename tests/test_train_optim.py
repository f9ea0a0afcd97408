"""Optimizer pieces: learning-rate schedules, the weight-decay mask, the EMA schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import oat as oat_configs
from oat_jax.model import init_params
from oat_jax.training import ema, optim
from oat_jax.training.run_config import oat_config


def _optim(**kw):
    base = oat_configs.get_config("").optim
    base.update(kw)
    return base


def test_warmup_then_cosine_reaches_floor():
    sched = optim.make_lr_schedule(_optim(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1), 110)
    lrs = np.array([float(sched(i)) for i in range(111)])
    np.testing.assert_allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10, rtol=1e-6)  # warmup really applied
    assert lrs[0] > 0
    assert np.all(np.diff(lrs[10:]) <= 1e-12)  # non-increasing after the warmup
    np.testing.assert_allclose(lrs[110], 1e-4, rtol=1e-5)
    np.testing.assert_allclose(lrs[60], 1e-4 + 0.5 * (1e-3 - 1e-4), rtol=1e-5)  # half-way of the cosine


def test_constant_schedule_and_bad_values():
    sched = optim.make_lr_schedule(_optim(lr=5e-5, warmup_steps=0, min_lr_ratio=1.0), 100)
    assert [float(sched(i)) for i in (0, 50, 99, 100)] == [np.float32(5e-5)] * 4  # exactly constant
    sched = optim.make_lr_schedule(_optim(lr=1e-3, warmup_steps=4, min_lr_ratio=1.0), 100)
    assert [float(sched(i)) for i in (0, 3, 50)] == pytest.approx([2.5e-4, 1e-3, 1e-3])
    for ratio in (0.0, 1.5):
        with pytest.raises(ValueError, match="min_lr_ratio"):
            optim.make_lr_schedule(_optim(min_lr_ratio=ratio), 10)
    with pytest.raises(ValueError, match="lr"):
        optim.make_lr_schedule(_optim(lr=0.0), 10)


def test_weight_decay_only_on_matrices():
    cfg = oat_config(oat_configs.get_config("test").model, 3)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    mask = optim.weight_decay_mask(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        decayed = jax.tree_util.tree_reduce(lambda a, b: a, _get(mask, path))
        assert decayed == (leaf.ndim >= 2), jax.tree_util.keystr(path)
    # With zero gradients only the decayed (>= 2-D) weights move, and they shrink.
    tx, _ = optim.make_optimizer(_optim(lr=0.1, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.5), 10)
    params = jax.tree.map(lambda p: p + 1.0, params)
    updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(params)
    for (path, u), p in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params)):
        if p.ndim >= 2:
            np.testing.assert_allclose(u, -0.1 * 0.5 * p, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
        else:
            assert np.all(np.asarray(u) == 0), jax.tree_util.keystr(path)


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_ema_schedule_matches_reference():
    decays = [float(ema.ema_decay(n)) for n in range(6)]
    expected = [0.0, 0.0] + [1 - n ** -0.75 for n in range(2, 6)]
    np.testing.assert_allclose(decays, expected, rtol=1e-6)
    assert float(ema.ema_decay(10 ** 9)) == pytest.approx(0.9999)
    assert float(ema.ema_decay(10 ** 9, max_decay=0.99)) == pytest.approx(0.99)
    new, decay = ema.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, jnp.int32(4))
    np.testing.assert_allclose(new["w"], float(decay) * np.ones(3), rtol=1e-6)
    assert 0 < float(decay) < 1
