"""Optimizer pieces: learning-rate schedules, the weight-decay mask, the EMA schedule, gradient accumulation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import oat as oat_configs
from oat_jax.model import OATModel, init_params
from oat_jax.normalizer import ActionNormalizer
from oat_jax.training import ema, optim
from oat_jax.training.train_step import init_train_state, make_train_step, model_config


def _optim(**kw):
    base = oat_configs.get_config("").optim
    base.update(kw)
    return base


def test_warmup_then_cosine_reaches_floor():
    sched = optim.make_lr_schedule(_optim(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1), 110)
    lrs = np.array([float(sched(i)) for i in range(111)])
    np.testing.assert_allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10, rtol=1e-6)  # warmup really applied
    assert lrs[0] > 0
    assert np.all(np.diff(lrs[10:]) <= 1e-12)  # non-increasing after the warmup
    np.testing.assert_allclose(lrs[110], 1e-4, rtol=1e-5)
    np.testing.assert_allclose(lrs[60], 1e-4 + 0.5 * (1e-3 - 1e-4), rtol=1e-5)  # half-way of the cosine


def test_constant_schedule_and_bad_values():
    sched = optim.make_lr_schedule(_optim(lr=5e-5, warmup_steps=0, schedule="constant"), 100)
    assert [float(sched(i)) for i in (0, 50, 99)] == pytest.approx([5e-5] * 3)
    with pytest.raises(ValueError, match="schedule"):
        optim.make_lr_schedule(_optim(schedule="linear"), 10)
    with pytest.raises(ValueError, match="lr"):
        optim.make_lr_schedule(_optim(lr=0.0), 10)


def test_weight_decay_only_on_matrices():
    cfg = model_config(oat_configs.get_config("test").model, 3)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    mask = optim.weight_decay_mask(params)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        decayed = jax.tree_util.tree_reduce(lambda a, b: a, _get(mask, path))
        assert decayed == (leaf.ndim >= 2), jax.tree_util.keystr(path)
    # With zero gradients only the decayed (>= 2-D) weights move, and they shrink.
    tx, _ = optim.make_optimizer(_optim(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5), 10)
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


def _run_steps(accum_steps, batches):
    config = oat_configs.get_config("test,oatx")
    config.model.update(enc_dropout=0.0, dec_dropout=0.0, dec_attn_dropout=0.0)  # deterministic loss
    config.optim.accum_steps = accum_steps
    model = OATModel(model_config(config.model, 3))
    tx, schedule = optim.make_optimizer(config.optim, 10)
    state = jax.jit(functools.partial(init_train_state, model, tx, 0))()
    step = jax.jit(make_train_step(model, tx, schedule, ActionNormalizer.identity(3), config.ema, accum_steps))
    losses = []
    for batch in batches:
        state, metrics = step(state, {"actions": batch})
        losses.append(float(metrics["loss"]))
    return losses, state


def test_gradient_accumulation_matches_full_batch():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 8)[None, :, None]
    batches = [np.sin(2 * np.pi * (rng.uniform(0.2, 1.0, (16, 1, 3)) * t + rng.uniform(0, 1, (16, 1, 3))))
               .astype(np.float32) for _ in range(3)]
    full_losses, full = _run_steps(1, batches)
    acc_losses, acc = _run_steps(4, batches)
    np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-5)
    assert full_losses[2] < full_losses[0]  # the updates do something
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(full.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert int(acc.step) == int(full.step) == 3 and int(acc.ema_count) == 3


def test_bfloat16_compute_keeps_float32_params():
    config = oat_configs.get_config("test")
    config.model.dtype = "bfloat16"
    model = OATModel(model_config(config.model, 3))
    tx, schedule = optim.make_optimizer(config.optim, 10)
    state = jax.jit(functools.partial(init_train_state, model, tx, 0))()
    step = jax.jit(make_train_step(model, tx, schedule, ActionNormalizer.identity(3), config.ema))
    actions = np.sin(np.linspace(0, 3, 16 * 8 * 3)).reshape(16, 8, 3).astype(np.float32)
    state, metrics = step(state, {"actions": actions})
    assert np.isfinite(float(metrics["loss"]))
    assert {x.dtype for x in jax.tree.leaves((state.params, state.ema_params))} == {np.dtype(np.float32)}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim > 0} == {np.dtype(np.float32)}
