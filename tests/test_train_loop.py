"""The training loop in-process on a tiny RLDS dataset: resume == uninterrupted, the exported tokenizer reproduces
the logged evaluation, the workdir holds every artefact, a diverging run stops without a NaN checkpoint."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from oat_jax import OATTokenizer, artifacts
from oat_jax.model import OATModel
from oat_jax.training import checkpointing, data, train_and_evaluate
from oat_jax.training.faults import NonFiniteLossError
from oat_jax.training.metrics import read_metrics
from oat_jax.training.optim import make_optimizer
from oat_jax.training.tokenizer.step import init_train_state
from oat_jax.training.run_config import oat_config
import train_helpers
from train_helpers import compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _store(workdir):
    return checkpointing.CheckpointStore(os.path.join(workdir, "checkpoints"), artifacts.TOKENIZER_RUN_ITEMS[3:],
                                         read_only=True)


def _restore(workdir, step, config):
    """(the TrainState saved at `step` (single device), the run config JSON, the dataset statistics)."""
    store = _store(workdir)
    try:
        saved = store.restore_json(step, (artifacts.STATS_ITEM,))
        stats = saved[artifacts.STATS_ITEM]
        model = OATModel(oat_config(config.model, len(stats["action"]["min"])))
        tx, _ = make_optimizer(config.optim, config.train.num_steps)
        abstract = jax.eval_shape(functools.partial(init_train_state, model, tx, 0))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
        return store.restore(step, checkpointing.abstract_like(abstract, shardings)), saved["config"], stats
    finally:
        store.close()


def test_resume_artefacts_and_exported_tokenizer(tiny_dataset, tmp_path):
    """One test (the runs are the expensive part): an uninterrupted 4-step run and a 2-step run resumed to 4."""
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    metrics = train_and_evaluate(train_helpers.tiny_config(tiny_dataset, **{"train.num_steps": 4}), full)
    train_and_evaluate(train_helpers.tiny_config(tiny_dataset, **{"train.num_steps": 2}), split)
    resumed = train_and_evaluate(train_helpers.tiny_config(tiny_dataset, **{"train.num_steps": 4}), split)
    _check_resume_equals_uninterrupted(full, split, metrics, resumed)
    _check_workdir_artefacts(full)
    _check_exported_tokenizer_reproduces_evaluation(full, metrics, tiny_dataset)


def _check_resume_equals_uninterrupted(full, split, metrics, resumed):
    config = train_helpers.tiny_config("", **{"train.num_steps": 4})
    a, config_json, stats = _restore(full, 4, config)
    b, _, _ = _restore(split, 4, config)
    assert int(a.step) == int(b.step) == 4 and int(a.ema_count) == int(b.ema_count) == 4
    for name in ("params", "ema_params", "opt_state"):
        for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7, err_msg=name)
    losses = lambda w: {r["step"]: r["train/loss"] for r in read_metrics(w) if "train/loss" in r}
    assert sorted(losses(split)) == [1, 2, 3, 4]  # the resumed run started at step 3
    np.testing.assert_allclose([losses(split)[s] for s in (3, 4)], [losses(full)[s] for s in (3, 4)], rtol=1e-5)
    assert resumed["val_mse"] == pytest.approx(metrics["val_mse"], rel=1e-5)
    # the checkpoint is self-describing
    assert config_json["model"]["num_tokens"] == 4 and config_json["optim"]["lr"] == config.optim.lr
    assert stats["num_episodes"] == train_helpers.NUM_EPISODES - 1  # statistics of the train split only


def _check_workdir_artefacts(full):
    for name in ("rate_distortion.png", "reconstructions.png", "metrics.jsonl", "final_metrics.json"):
        assert os.path.getsize(os.path.join(full, name)) > 0, name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(full, "tb")))
    records = read_metrics(full)
    evals = [r for r in records if "eval/val_mse" in r]
    assert evals and evals[-1]["step"] == 4
    for key in ("eval/mse_norm/k1", "eval/mse_raw/k4", "eval/codebook/usage", "eval/codebook/perplexity_pos3"):
        assert key in evals[-1], key
    assert {r["step"] for r in records if "train/steps_per_sec" in r} == {1, 2, 3, 4}
    steps = _store(full).all_steps()
    assert steps == [2, 4]  # checkpoint.every = 2, keep_last = 2
    # a checkpoint step is a tokenizer: the final step equals the exported EMA tokenizer
    from_step, exported = OATTokenizer.load(full, step=4), OATTokenizer.load(full)
    assert from_step.config == exported.config
    assert from_step.normalizer.to_dict() == exported.normalizer.to_dict()
    for x, y in zip(jax.tree.leaves(from_step.params), jax.tree.leaves(exported.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _check_exported_tokenizer_reproduces_evaluation(full, metrics, tiny_dataset):
    with open(os.path.join(full, "final_metrics.json")) as f:
        assert json.load(f)["val_mse"] == pytest.approx(metrics["val_mse"])
    tok = OATTokenizer.load(full)  # no training code involved
    config = train_helpers.tiny_config(tiny_dataset)
    chunks = data.eval_chunks(data.dataset_spec(config.data), config.data, tok.horizon)
    tokens = tok.tokenize(chunks)[0]
    for k in range(1, tok.num_tokens + 1):
        recon = tok.detokenize(tokens, lengths=k)[0]
        raw = np.mean((recon - chunks) ** 2)
        norm = np.mean((tok.normalizer.normalize(recon) - tok.normalizer.normalize(chunks)) ** 2)
        assert raw == pytest.approx(metrics[f"mse_raw/k{k}"], rel=1e-4), k
        assert norm == pytest.approx(metrics[f"mse_norm/k{k}"], rel=1e-4, abs=1e-7), k
    used = len(np.unique(tokens)) / tok.vocab_size
    assert used == pytest.approx(metrics["codebook/usage"])


def test_streaming_input_trains(tiny_dataset, tmp_path):
    """The tf.data streaming path (for datasets larger than host memory) feeds the same train step."""
    config = train_helpers.tiny_config(tiny_dataset, **{"train.num_steps": 2, "data.shuffle_buffer": 64})
    metrics = train_and_evaluate(config, str(tmp_path))
    losses = [r["train/loss"] for r in read_metrics(str(tmp_path)) if "train/loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)) and np.isfinite(metrics["val_mse"])


def test_nan_loss_stops_without_nan_checkpoint(tiny_dataset, tmp_path):
    config = train_helpers.tiny_config(tiny_dataset, **{"optim.lr": 1e30, "train.num_steps": 6, "checkpoint.every": 1})
    with pytest.raises(NonFiniteLossError, match="lower config.optim.lr"):
        train_and_evaluate(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "tokenizer"))
    store = _store(str(tmp_path))
    saved = store.all_steps()
    store.close()
    bad_steps = [r["step"] for r in records if "train/loss" in r and r["train/loss"] is None]
    bad_step = min(bad_steps) if bad_steps else None
    assert bad_step is not None and saved  # it did diverge, after at least one good checkpoint
    for step in saved:
        state, _, _ = _restore(str(tmp_path), step, config)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((state.params, state.ema_params)))
        assert bad_step is None or step < bad_step


def test_the_next_batches_are_assembled_while_a_step_runs():
    """`loop.prefetched` overlaps the host's batch work with the step: step i only finishes once batch i + 1 is
    being assembled (serialized, this would wait forever), batches arrive in step order, sharded on the devices,
    and an error of the data source is raised by the consumer."""
    import threading

    from oat_jax.training import loop
    from oat_jax.training.sharding import batch_sharding, make_mesh

    sharding = batch_sharding(make_mesh(1))
    started = {i: threading.Event() for i in range(8)}

    class SlowSource:
        def local_batch(self, step):
            started[step].set()
            if step == 6:
                raise OSError("disk went away")
            return {"actions": np.full((8, 2), step, np.float32)}

    with loop.prefetched(SlowSource(), 0, 8, sharding, 8) as feed:
        for step in range(6):
            batch = next(feed)
            assert batch["actions"].sharding == sharding and float(batch["actions"][0, 0]) == step
            if step < 5:  # the "train step": needs the next batch to be under way already
                assert started[step + 1].wait(timeout=20), f"batch {step + 1} not started during step {step}"
        with pytest.raises(OSError, match="disk went away"):
            next(feed)
