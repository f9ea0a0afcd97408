"""Fault injection, training checkpoints: every committed step carries an integrity manifest; a flipped bit in a
step's files stops a resume (and load_pretrained) with an error naming the file."""

import os
import shutil

import pytest

import train_helpers
from oat_jax import integrity, load_pretrained
from oat_jax.training.tokenizer import trainer
from train_helpers import compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)


def _data_files(step_dir):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs
                  if f != integrity.MANIFEST_FILE and os.sep + "params" + os.sep in os.path.join(d, f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):  # noqa: F811
    """A finished tiny tokenizer run (checkpoints of steps 2 and 4); each test works on its own copy."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    trainer.train_and_evaluate(train_helpers.tiny_config(tiny_dataset), workdir)
    return workdir


def test_damaged_checkpoint_stops_resume_and_load_naming_the_file(tmp_path, trained, tiny_dataset,  # noqa: F811
                                                                 compilation_cache):  # noqa: F811
    workdir = shutil.copytree(trained, str(tmp_path / "run"))
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [2, 4]
    for step in steps:  # committed steps carry a manifest that still matches after the run closed
        step_dir = os.path.join(workdir, "checkpoints", str(step))
        assert integrity.verify(step_dir)
    load_pretrained(workdir, step=4)
    target = max(_data_files(os.path.join(workdir, "checkpoints", "4")), key=os.path.getsize)
    data = bytearray(open(target, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(target, "wb").write(bytes(data))
    with pytest.raises(integrity.IntegrityError) as e:
        load_pretrained(workdir, step=4)
    assert target in str(e.value)
    more = train_helpers.tiny_config(tiny_dataset, **{"train.num_steps": 8})
    with pytest.raises(integrity.IntegrityError) as e:
        trainer.train_and_evaluate(more, workdir)
    assert target in str(e.value)


def test_a_step_whose_manifest_was_deleted_is_refused_until_the_run_records_it(tmp_path, trained):
    """A run marks its checkpoints (every step gets a manifest): a step of it without one is an error naming the
    way out; reopening the run as its writer (a resume) records the manifest again; runs written before the marker
    existed still load unverified."""
    from oat_jax import OATTokenizer, artifacts
    from oat_jax.training.checkpointing import CheckpointStore

    workdir = shutil.copytree(trained, str(tmp_path / "run"))
    checkpoints = os.path.join(workdir, "checkpoints")
    assert os.path.isfile(os.path.join(checkpoints, artifacts.STEP_MANIFESTS_FILE))
    os.remove(os.path.join(checkpoints, "4", integrity.MANIFEST_FILE))
    with pytest.raises(integrity.IntegrityError, match=r"has no integrity\.json, though this run records one"):
        OATTokenizer.load(workdir, step=4)
    with pytest.raises(integrity.IntegrityError, match="records one for every checkpoint step"):
        load_pretrained(workdir, step="latest")
    OATTokenizer.load(workdir, step=4, verify=False)  # the way out the message names
    CheckpointStore(checkpoints, (artifacts.STATS_ITEM, artifacts.TOKENIZER_ITEM)).close()  # the run's writer
    assert integrity.verify(os.path.join(checkpoints, "4"))
    OATTokenizer.load(workdir, step=4)
    os.remove(os.path.join(checkpoints, "4", integrity.MANIFEST_FILE))  # a run from before the marker
    os.remove(os.path.join(checkpoints, artifacts.STEP_MANIFESTS_FILE))
    OATTokenizer.load(workdir, step=4)
