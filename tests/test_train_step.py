"""The train step under different execution plans: 1 device vs 8 simulated devices (data-parallel and FSDP) and
bfloat16 compute give the same training (losses after 3 steps); mesh and sharding rules."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import oat as oat_configs
from oat_jax.model import OATModel
from oat_jax.normalizer import ActionNormalizer
from oat_jax.training import optim, run_config, sharding
from oat_jax.training.tokenizer.objective import Objective
from oat_jax.training.tokenizer.step import init_train_state, make_train_step
from oat_jax.training.run_config import oat_config

GLOBAL_BATCH = 16


def _losses(variant, devices, num_steps=3, dtype="float32"):
    """Training losses of `num_steps` steps on fixed batches, and the final state."""
    config = oat_configs.get_config(variant)
    config.model.dtype = dtype
    model = OATModel(oat_config(config.model, 3))
    tx, schedule = optim.make_optimizer(config.optim, 10)
    shard = run_config.tokenizer_run(config).sharding
    mesh = sharding.make_mesh(shard.fsdp, devices)
    init = functools.partial(init_train_state, model, tx, 0)
    state_sharding = sharding.tree_shardings(jax.eval_shape(init), mesh, shard)
    state = jax.jit(init, out_shardings=state_sharding)()
    batch_sharding = sharding.batch_sharding(mesh)
    normalizer = ActionNormalizer.from_stats({"min": [-1, -5, -0.2], "max": [1, 5, 0.2]})  # batches come normalized
    step = jax.jit(make_train_step(model, tx, schedule, config.ema, Objective()),  # the paper's objective
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    rows = sharding.process_rows(batch_sharding, GLOBAL_BATCH)
    losses = []
    for _ in range(num_steps):
        actions = (rng.uniform(-1, 1, (GLOBAL_BATCH, model.config.horizon, 3)) * [1, 5, 0.2]).astype(np.float32)
        batch = sharding.to_global({"actions": normalizer.normalize(actions[rows])}, batch_sharding, GLOBAL_BATCH)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


@pytest.fixture(scope="module")
def single_device():
    """(losses, state) of the reference: one device, float32."""
    return _losses("test", jax.devices()[:1])


@pytest.mark.parametrize("variant", ["test", "test,fsdp"], ids=["data_parallel", "fsdp"])
def test_eight_devices_match_one(single_device, variant):
    assert jax.device_count() == 8, "conftest should simulate 8 CPU devices"
    losses, state = _losses(variant, jax.devices())
    single_device_losses = single_device[0]
    np.testing.assert_allclose(losses, single_device_losses, rtol=1e-5)
    assert not np.allclose(losses[0], losses[2])  # the steps really update the params
    specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state.params)]
    if variant == "test,fsdp":  # params really split over the fsdp axis, batch-independent
        assert sum("fsdp" in spec for spec in specs) >= len(specs) // 2
        assert all(leaf.sharding.mesh.shape["fsdp"] == 8 for leaf in jax.tree.leaves(state.params))
    else:
        assert all(spec == jax.sharding.PartitionSpec() for spec in specs)


def test_bfloat16_compute_keeps_float32_params(single_device):
    losses, state = _losses("test", jax.devices()[:1], dtype="bfloat16")
    np.testing.assert_allclose(losses, single_device[0], rtol=5e-2)  # same training, bf16 rounding
    assert not np.allclose(losses, single_device[0], rtol=1e-6)  # the matmuls really ran in bfloat16
    assert {x.dtype for x in jax.tree.leaves((state.params, state.ema_params))} == {np.dtype(np.float32)}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim > 0} == {np.dtype(np.float32)}


def test_sharding_rules_are_data():
    mesh = sharding.make_mesh(4)
    assert mesh.shape == {"data": 2, "fsdp": 4}
    cfg = ml_collections.ConfigDict({"rules": ((r"decoder/.*kernel", "fsdp"), (r"bias", ("fsdp",)),
                                               (r".*", "replicate")), "fsdp_min_size": 8})
    tree = {"decoder": {"kernel": np.zeros((6, 12)), "bias": np.zeros(8)}, "encoder": {"kernel": np.zeros((8, 8))},
            "small": {"decoder": {"kernel": np.zeros((2,))}}}
    out = sharding.tree_shardings(tree, mesh, cfg)
    assert out["decoder"]["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp")  # largest divisible dim
    assert out["decoder"]["bias"].spec == jax.sharding.PartitionSpec("fsdp")
    assert out["encoder"]["kernel"].spec == jax.sharding.PartitionSpec()
    assert out["small"]["decoder"]["kernel"].spec == jax.sharding.PartitionSpec()  # below fsdp_min_size
    bad = ml_collections.ConfigDict({"rules": ((".*", "shard_everything"),), "fsdp_min_size": 1})
    with pytest.raises(ValueError, match="Unknown sharding rule"):
        sharding.tree_shardings(tree, mesh, bad)


def test_mesh_and_batch_errors_are_clear():
    for bad in (3, 0, -2):
        with pytest.raises(ValueError, match=r"config\.sharding\.fsdp=.* must divide the 8 devices"):
            sharding.make_mesh(bad)
    assert sharding.make_mesh(-1).shape == {"data": 1, "fsdp": 8}
    mesh = sharding.make_mesh(1)
    assert mesh.shape == {"data": 8, "fsdp": 1}
    with pytest.raises(ValueError, match="multiple of 8"):
        sharding.check_batch_divisible(12, mesh)
    sharding.check_batch_divisible(16, mesh)
    rows = sharding.process_rows(sharding.batch_sharding(mesh), 16)
    np.testing.assert_array_equal(rows, np.arange(16))  # one process owns every row
