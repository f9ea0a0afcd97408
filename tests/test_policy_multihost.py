"""Multi-process policy training on the tokenizer's mesh code: two localhost processes (jax.distributed + gloo CPU
collectives, 4 simulated devices each) match one 8-device process on in-memory pairs, and train on their own
episode shards when streamed."""

import os

import jax
import numpy as np
import pytest

import train_helpers
from policy_helpers import save_tiny_oat
from train_helpers import ACTION_DIM, compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)
from experiments.configs import policy as policy_configs
from oat_jax.policy import load_policy

STEPS = 3


def _run_two_processes(tmp_path, name, data, flags):
    workdir, address = str(tmp_path / name), f"localhost:{train_helpers.free_port()}"
    procs = []
    for i in range(2):
        cmd = train_helpers.train_command(workdir, data, *flags, f"--coordinator_address={address}",
                                          "--num_processes=2", f"--process_id={i}", config="policy.py:oat,test")
        procs.append(train_helpers.popen(cmd, train_helpers.subprocess_env(4), str(tmp_path / f"{name}{i}.log")))
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=400) == 0, train_helpers.read_log(str(tmp_path / f"{name}{i}.log"))[-4000:]
    assert "process 1 of 2" in train_helpers.read_log(str(tmp_path / f"{name}1.log"))
    return workdir


@pytest.mark.usefixtures("compilation_cache")
def test_two_policy_processes_match_one(tmp_path, tiny_dataset):  # noqa: F811
    from oat_jax.training.policy.trainer import train_and_evaluate

    tokenizer = save_tiny_oat(str(tmp_path / "tok"), action_dim=ACTION_DIM)
    fields = {"tokenizer.path": tokenizer, "train.num_steps": STEPS, "train.eval_every": STEPS,
              "checkpoint.every": STEPS, "train.log_every": 1}
    flags = [f"--config.{k}={v}" for k, v in fields.items()]
    multi = _run_two_processes(tmp_path, "multi", tiny_dataset, flags)

    config = policy_configs.get_config("oat,test")
    for key, value in fields.items():
        section, field = key.split(".")
        config[section][field] = value
    config.data.path = tiny_dataset
    single = str(tmp_path / "single")
    metrics = train_and_evaluate(config, single)  # this process: 8 devices, one process
    assert len(train_helpers.train_losses(multi)) == len(train_helpers.train_losses(single)) == STEPS
    np.testing.assert_allclose(train_helpers.train_losses(multi), train_helpers.train_losses(single), rtol=1e-5)
    a, b = load_policy(multi), load_policy(single)  # exported by process 0
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=2e-5)
    assert np.isfinite(metrics["val_loss"])


@pytest.mark.slow  # about 50 s on 2 cores: two training processes
@pytest.mark.usefixtures("compilation_cache")
def test_two_streaming_policy_processes_train_on_their_shards(tmp_path, tiny_dataset):  # noqa: F811
    """Streamed: each process reads its half of the train episodes; the run trains and exports one policy."""
    tokenizer = save_tiny_oat(str(tmp_path / "tok"), action_dim=ACTION_DIM)
    flags = [f"--config.tokenizer.path={tokenizer}", f"--config.train.num_steps={STEPS}",
             f"--config.train.eval_every={STEPS}", f"--config.checkpoint.every={STEPS}", "--config.train.log_every=1",
             "--config.data.shuffle_buffer=64"]
    streamed = _run_two_processes(tmp_path, "streamed", tiny_dataset, flags)
    losses = train_helpers.train_losses(streamed)
    assert len(losses) == STEPS and np.all(np.isfinite(losses))
    assert os.path.isfile(os.path.join(streamed, "policy", "policy.json"))
