"""Policy training: the step lowers the token loss; the trainer writes a self-contained policy that reloads."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from policy_helpers import save_tiny_oat
from train_helpers import ACTION_DIM, tiny_dataset  # noqa: F401  (session fixture)

from experiments.configs import policy as policy_configs
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel
from oat_jax.policy.policy import TokenPolicy
from oat_jax.training.optim import make_optimizer
from oat_jax.training.policy.step import init_policy_state, make_policy_train_step


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    config = PolicyConfig(vocab_size=12, max_tokens=4, obs_dim=6, width=32, depth=1, num_heads=2, state_hidden=16,
                          dropout=0.0)
    model = TokenPolicyModel(config)
    optim = policy_configs.get_config("test").optim
    optim.lr, optim.warmup_steps, optim.min_lr_ratio = 3e-3, 1, 1.0
    tx, schedule = make_optimizer(optim, 30)
    state = init_policy_state(model, tx, 0)
    step = jax.jit(make_policy_train_step(model, tx, schedule, ml_collections.ConfigDict(
        {"power": 0.75, "max_decay": 0.999})))
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, 12, (16, 4)), jnp.int32), "lengths": jnp.full((16,), 4, jnp.int32),
             "state": jnp.asarray(rng.normal(size=(16, 2, 6)), jnp.float32)}
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(np.log(config.embed_size), rel=0.1)  # near-uniform at init
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30 and int(state.ema_count) == 30


@pytest.mark.slow  # about 25 s on 2 idle cores (two training runs: data loading, compilations, Orbax)
def test_trainer_writes_a_self_contained_policy(tiny_dataset, tmp_path):  # noqa: F811
    save_tiny_oat(str(tmp_path / "tok_run" / "tokenizer"), action_dim=ACTION_DIM)
    config = policy_configs.get_config("oat,test")
    config.data.path = tiny_dataset
    config.tokenizer.path = str(tmp_path / "tok_run")  # a workdir holding tokenizer/
    workdir = str(tmp_path / "policy_run")
    from oat_jax.training.policy.trainer import train_and_evaluate
    metrics = train_and_evaluate(config, workdir)
    assert np.isfinite(metrics["val_loss"]) and 0.0 <= metrics["val_token_acc"] <= 1.0
    with open(os.path.join(workdir, "final_metrics.json"), encoding="utf-8") as f:
        final = json.load(f)
    assert final["step"] == config.train.num_steps and final["token_stats"]["max_length"] == 4
    shutil.rmtree(tmp_path / "tok_run")  # the tokenizer's workdir is gone
    policy = TokenPolicy.load(workdir)
    obs = {"state": np.zeros((2, config.data.n_obs_steps, 3), np.float32)}
    actions, valid = policy.act(obs, jax.random.PRNGKey(0), num_tokens=2)
    assert actions.shape == (2, 8, ACTION_DIM) and valid.all()
    # resuming restores the tokenizer from the checkpoint (the original is deleted) and trains on
    config.train.num_steps += 2
    more = train_and_evaluate(config, workdir)
    assert np.isfinite(more["val_loss"])
    with open(os.path.join(workdir, "final_metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["step"] == config.train.num_steps


def test_a_policy_run_stays_paired_with_its_tokenizer(tiny_dataset, tmp_path):  # noqa: F811
    """Resuming with another config.tokenizer.path is refused naming the flag, and a checkpoint step whose
    frozen_tokenizer folder was replaced by another tokenizer is refused (its recorded SHA-256 differs)."""
    from oat_jax import integrity
    from oat_jax.training.policy.trainer import train_and_evaluate

    save_tiny_oat(str(tmp_path / "tok_a"), action_dim=ACTION_DIM, seed=0)
    save_tiny_oat(str(tmp_path / "tok_b"), action_dim=ACTION_DIM, seed=1)
    config = policy_configs.get_config("oat,test")
    config.data.path, config.tokenizer.path = tiny_dataset, str(tmp_path / "tok_a")
    config.train.num_steps, config.checkpoint.every = 2, 2
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)
    TokenPolicy.load(workdir, step="latest")  # intact: loads
    config.tokenizer.path, config.train.num_steps = str(tmp_path / "tok_b"), 4
    with pytest.raises(ValueError, match=r"config\.tokenizer\.path=.*tok_b.*was started with .*tok_a"):
        train_and_evaluate(config, workdir)
    frozen = os.path.join(workdir, "frozen_tokenizer")
    shutil.rmtree(frozen)
    shutil.copytree(str(tmp_path / "tok_b"), frozen)  # another (intact) tokenizer in its place
    with pytest.raises(integrity.IntegrityError, match="not the tokenizer"):
        TokenPolicy.load(workdir, step="latest")
