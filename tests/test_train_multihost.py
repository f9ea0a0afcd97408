"""Multi-process training: two localhost processes (jax.distributed + gloo CPU collectives, 4 simulated devices
and their own data rows each) match a single 8-device process, and their checkpoint restores in one process."""

import functools
import os

import jax
import numpy as np

import pytest

import train_helpers
from train_helpers import compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)
from oat_jax import OATTokenizer, artifacts
from oat_jax.model import OATModel
from oat_jax.training import checkpointing, train_and_evaluate
from oat_jax.training.optim import make_optimizer
from oat_jax.training.tokenizer.step import init_train_state
from oat_jax.training.run_config import oat_config

FLAGS = ("--config.train.num_steps=3", "--config.train.eval_every=3", "--config.checkpoint.every=3")


@pytest.mark.usefixtures("compilation_cache")
def test_two_processes_match_one(tmp_path, tiny_dataset):
    data = tiny_dataset
    multi = str(tmp_path / "multi")
    address = f"localhost:{train_helpers.free_port()}"
    procs = []
    for i in range(2):
        cmd = train_helpers.train_command(multi, data, *FLAGS, f"--coordinator_address={address}",
                                          "--num_processes=2", f"--process_id={i}")
        procs.append(train_helpers.popen(cmd, train_helpers.subprocess_env(4), str(tmp_path / f"proc{i}.log")))
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=400) == 0, train_helpers.read_log(str(tmp_path / f"proc{i}.log"))[-4000:]
    assert "process 1 of 2" in train_helpers.read_log(str(tmp_path / "proc1.log"))

    single = str(tmp_path / "single")
    config = train_helpers.tiny_config(data, **{"train.num_steps": 3, "train.eval_every": 3, "checkpoint.every": 3})
    metrics = train_and_evaluate(config, single)  # this process: 8 devices, one process
    multi_losses, single_losses = train_helpers.train_losses(multi), train_helpers.train_losses(single)
    assert len(multi_losses) == len(single_losses) == 3
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)

    # The multi-process checkpoint restores in this single process, onto one device.
    store = checkpointing.CheckpointStore(os.path.join(multi, "checkpoints"), artifacts.TOKENIZER_RUN_ITEMS[3:],
                                          read_only=True)
    model = OATModel(oat_config(config.model, train_helpers.ACTION_DIM))
    tx, _ = make_optimizer(config.optim, 3)
    abstract = jax.eval_shape(functools.partial(init_train_state, model, tx, 0))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = store.restore(3, checkpointing.abstract_like(abstract, jax.tree.map(lambda _: device, abstract)))
    store.close()
    assert int(state.step) == 3
    reference = OATTokenizer.load(single)
    for x, y in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(reference.params)):
        # near-zero entries get Adam steps from gradients at round-off level: compare on the params' scale
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=2e-5)
    exported = OATTokenizer.load(multi)  # written by process 0 through the export subprocess
    for x, y in zip(jax.tree.leaves(exported.params), jax.tree.leaves(state.ema_params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert metrics["val_mse"] > 0
