"""`load_pretrained` from exported tokenizers and training workdirs, and the pure functions inside user jit /
shard_map code on an 8-device CPU mesh."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments.configs import oat as oat_configs
from oat_helpers import TINY, random_params, smooth_actions
from oat_jax import ActionNormalizer, OATTokenizer, artifacts, load_pretrained
from oat_jax.artifacts import resolve_step
from oat_jax.training.checkpointing import CheckpointStore
from oat_jax.training.train_state import TrainState
from oat_jax.training.run_config import oat_config

STATS = {"action": {"min": [-1.0, -2.0, 0.0], "max": [1.0, 3.0, 0.5], "mean": [0.0, 0.5, 0.2],
                    "std": [0.5, 1.0, 0.1], "q01": [-0.9, -1.8, 0.01], "q99": [0.9, 2.8, 0.49], "count": 100},
         "num_episodes": 4, "num_transitions": 100}


def _equal_trees(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    normalizer = ActionNormalizer.fit(smooth_actions(32, TINY.horizon, TINY.action_dim, seed=3) * 2.0 + 0.5)
    tok = OATTokenizer(TINY, random_params(TINY), normalizer)
    path = tok.save(str(tmp_path_factory.mktemp("vla") / "tok"))
    return tok, path


def test_tokenizer_directory(saved):
    tok, path = saved
    loaded = load_pretrained(path)
    assert _equal_trees(loaded.params, tok.params) and isinstance(loaded.params, dict)
    assert loaded.tokenizer.config == TINY and loaded.tokenizer.normalizer.to_dict() == tok.normalizer.to_dict()
    assert loaded.params is loaded.tokenizer.params
    actions = smooth_actions(4, TINY.horizon, TINY.action_dim, seed=1)
    np.testing.assert_array_equal(loaded.tokenize_fn(loaded.params, actions), tok.tokenize(actions)[0])
    with pytest.raises(ValueError, match="step=None"):
        load_pretrained(path, step="best")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(path + "_missing")
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        load_pretrained(os.path.dirname(path))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, saved):
    """A training workdir written by the training code's own CheckpointStore: steps 2 and 4 with distinct raw and
    EMA params, the run config (normalizer mode 'gaussian', action_dim -1) and validation MSE logged per step."""
    config = oat_configs.get_config("test")
    config.normalizer.mode = "gaussian"
    model_cfg = oat_config(config.model, 3)
    root = tmp_path_factory.mktemp("run")
    store = CheckpointStore(str(root / "checkpoints"), (artifacts.STATS_ITEM, artifacts.TOKENIZER_ITEM), keep_last=3,
                            keep_best=0, async_save=False)
    normalizer = ActionNormalizer.from_stats(STATS["action"], "gaussian")
    assets = {artifacts.STATS_ITEM: STATS, artifacts.TOKENIZER_ITEM: artifacts.tokenizer_assets(model_cfg, normalizer)}
    emas = {}
    for step in (2, 4):
        raw, emas[step] = random_params(model_cfg, seed=10 + step), random_params(model_cfg, seed=20 + step)
        state = TrainState(step=jnp.int32(step), params=raw, ema_params=emas[step],
                           opt_state=optax.adam(1e-3).init(raw), ema_count=jnp.int32(step),
                           rng=jax.random.PRNGKey(0))
        store.save(step, state, json.loads(config.to_json_best_effort()), assets)
    store.close()
    with open(root / "metrics.jsonl", "w") as f:
        for step, mse in ((2, 0.1), (4, 0.3)):
            f.write(json.dumps({"step": step, "train/loss": 1.0}) + "\n")
            f.write(json.dumps({"step": step, "eval/val_mse": mse}) + "\n")
    return str(root), model_cfg, emas


def test_training_checkpoints_give_ema_params_config_and_normalizer(workdir):
    root, model_cfg, emas = workdir
    latest = load_pretrained(root)  # no tokenizer/ yet: the latest checkpoint
    assert latest.tokenizer.config == model_cfg
    assert _equal_trees(latest.params, emas[4])
    expected_norm = ActionNormalizer.from_stats(STATS["action"], "gaussian")
    np.testing.assert_array_equal(latest.tokenizer.normalizer.scale, expected_norm.scale)
    np.testing.assert_array_equal(latest.tokenizer.normalizer.offset, expected_norm.offset)
    assert latest.tokenizer.normalizer.mode == "gaussian"
    assert _equal_trees(load_pretrained(root, step=2).params, emas[2])
    step_dir = os.path.join(root, "checkpoints", "2")  # a checkpoint step directory is itself a tokenizer
    assert _equal_trees(OATTokenizer.load(step_dir).params, emas[2])
    with pytest.raises(ValueError, match="step=None"):
        OATTokenizer.load(step_dir, step=4)
    assert _equal_trees(load_pretrained(root, step="best").params, emas[2])  # lowest eval/val_mse
    assert resolve_step(root, "latest") == 4 and resolve_step(root, "best") == 2
    with pytest.raises(FileNotFoundError, match=r"kept steps: \[2, 4\]"):
        load_pretrained(root, step=3)
    with pytest.raises(ValueError, match="step must be"):
        load_pretrained(root, step="newest")


def test_workdir_tokenizer_subdirectory_wins_when_no_step(workdir, saved, tmp_path):
    root, _, emas = workdir
    tok, _ = saved
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(os.path.join(root, "checkpoints"), run / "checkpoints")
    tok.save(str(run / "tokenizer"))
    assert _equal_trees(load_pretrained(str(run)).params, tok.params)
    assert _equal_trees(load_pretrained(str(run), step="latest").params, emas[4])
    with pytest.raises(ValueError, match="No validation metric"):  # no metrics.jsonl in this run
        load_pretrained(str(run), step="best")


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == 8, "conftest.py should provide 8 simulated CPU devices"
    return Mesh(np.array(jax.devices()), ("data",))


def test_pure_functions_in_user_jit_on_a_sharded_batch(saved, mesh):
    tok, path = saved
    replicated = NamedSharding(mesh, P())
    loaded = load_pretrained(path, sharding=replicated)
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(loaded.params))
    actions = smooth_actions(16, TINY.horizon, TINY.action_dim, seed=5)
    lengths = np.tile(np.arange(1, TINY.num_tokens + 1, dtype=np.int32), 2)
    batch = NamedSharding(mesh, P("data"))
    actions_d, lengths_d = jax.device_put(actions, batch), jax.device_put(lengths, batch)

    @jax.jit
    def policy_step(params, acts, lens):  # a user's function that calls the tokenizer inside
        tokens = loaded.tokenize_fn(params, acts * 1.0)
        return tokens, loaded.detokenize_fn(params, tokens, lens)

    tokens, recon = policy_step(loaded.params, actions_d, lengths_d)
    assert recon.sharding.is_equivalent_to(batch, recon.ndim)
    np.testing.assert_array_equal(tokens, tok.tokenize(actions)[0])
    np.testing.assert_allclose(recon, tok.detokenize(np.asarray(tokens), lengths)[0], atol=1e-5)
    assert len(np.unique(np.asarray(tokens))) > 4

    sharded = jax.jit(jax.shard_map(lambda p, a, k: loaded.detokenize_fn(p, loaded.tokenize_fn(p, a), k),
                                    mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P("data")))
    np.testing.assert_allclose(sharded(loaded.params, actions_d, lengths_d), recon, atol=1e-5)


def test_per_leaf_shardings_and_bad_sharding(saved, mesh):
    _, path = saved
    tree = jax.tree.map(lambda x: NamedSharding(mesh, P(*([None] * (x.ndim - 1) + ["data"])) if x.shape[-1] % 8 == 0
                                                else P()), random_params(TINY))
    loaded = load_pretrained(path, sharding=tree)
    kernel = loaded.params["decoder"]["layer_0"]["linear1"]["kernel"]  # (32, 64): split over 8 devices
    assert kernel.sharding.spec == P(None, "data") and kernel.addressable_shards[0].data.shape == (32, 8)
    assert _equal_trees(loaded.params, random_params(TINY))
    with pytest.raises(ValueError, match="pytree of Shardings"):
        load_pretrained(path, sharding={"encoder": NamedSharding(mesh, P())})


def test_one_compilation_per_batch_shape_for_every_k_and_bfloat16_params(saved, mesh):
    """The pure functions under the user's jit: every prefix length k of a sharded batch reuses one compilation, and
    params cast to bfloat16 (as a VLA stack may hold them) run and decode close to the float32 ones."""
    tok, path = saved
    loaded = load_pretrained(path, sharding=NamedSharding(mesh, P()))
    batch = NamedSharding(mesh, P("data"))
    actions = jax.device_put(smooth_actions(16, TINY.horizon, TINY.action_dim, seed=6), batch)

    @jax.jit
    def decode_prefix(params, acts, lens):
        return loaded.detokenize_fn(params, loaded.tokenize_fn(params, acts), lens)

    errors = []
    for k in range(1, TINY.num_tokens + 1):
        recon = decode_prefix(loaded.params, actions, jax.device_put(np.full((16,), k, np.int32), batch))
        errors.append(float(np.mean((np.asarray(recon) - np.asarray(actions)) ** 2)))
    assert decode_prefix._cache_size() == 1, "each k must reuse the batch shape's compilation"
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), loaded.params)
    full = jax.device_put(np.full((16,), TINY.num_tokens, np.int32), batch)
    recon_bf16 = np.asarray(decode_prefix(bf16, actions, full), np.float32)
    assert np.all(np.isfinite(recon_bf16))
    assert float(np.mean((recon_bf16 - np.asarray(actions)) ** 2)) < 2.0 * errors[-1] + 1e-3
