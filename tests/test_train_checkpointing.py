"""CheckpointStore: retention (last N + best k by validation MSE), round trip, leftover temporary directories."""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oat_jax.training.checkpointing import CheckpointStore, abstract_like
from oat_jax.training.train_state import TrainState


def _state(step, value):
    params = {"w": jnp.full((3, 2), value, jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    return TrainState(step=jnp.int32(step), params=params, ema_params=jax.tree.map(lambda x: x * 0.5, params),
                      opt_state=({"mu": params["w"] + 1},), ema_count=jnp.int32(step),
                      rng=jax.random.PRNGKey(step))


def test_keeps_last_and_best_and_round_trips(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"), ("dataset_stats",), keep_last=2, keep_best=1, async_save=True)
    val_mse = {1: 0.5, 2: 0.1, 3: 0.3, 4: None, 5: 0.4}
    for step, mse in val_mse.items():
        store.save(step, _state(step, float(step)), {"lr": 1e-3}, {"dataset_stats": {"action": {"min": [0.0]}}},
                   None if mse is None else {"val_mse": mse})
    store.wait()
    assert store.all_steps() == [2, 4, 5]  # best (2) + the last two (4, 5)
    assert store.best_step() == 2 and store.latest_step() == 5
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    template = _state(0, 0.0)
    abstract = abstract_like(template, jax.tree.map(lambda _: device, template))
    restored = store.restore(2, abstract)
    saved = store.restore_json(2, ("dataset_stats", "tokenizer"))  # items a step does not hold are left out
    with pytest.raises(ValueError, match="do not match"):
        store.save(6, _state(6, 6.0), {}, {"tokenizer": {}})
    store.close()
    expected = _state(2, 2.0)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert saved == {"config": {"lr": 1e-3}, "dataset_stats": {"action": {"min": [0.0]}}}


def test_incomplete_directories_are_ignored_and_cleaned(tmp_path):
    root = str(tmp_path / "ckpt")
    store = CheckpointStore(root, ("dataset_stats",), async_save=False)
    store.save(3, _state(3, 1.0), {}, {"dataset_stats": {}})
    store.close()
    leftover = os.path.join(root, "7.orbax-checkpoint-tmp-99")  # what a kill -9 during a save leaves behind
    os.makedirs(os.path.join(leftover, "params"))
    reader = CheckpointStore(root, ("dataset_stats",), read_only=True)
    assert reader.latest_step() == 3  # read-only: ignored, left alone
    reader.close()
    assert os.path.exists(leftover)
    writer = CheckpointStore(root, ("dataset_stats",))
    assert writer.latest_step() == 3 and writer.all_steps() == [3]
    writer.close()
    deadline = time.time() + 30
    while os.path.exists(leftover) and time.time() < deadline:  # Orbax cleans up in a background thread
        time.sleep(0.1)
    assert not os.path.exists(leftover)  # a writing run removes it
