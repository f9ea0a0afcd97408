"""Fault injection, resume: a workdir resumed with a changed model size is an error naming the changed fields and
the checkpoint, not Orbax's internals."""

import pytest

import train_helpers
from oat_jax.training.tokenizer import trainer
from train_helpers import compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)


def test_resume_with_a_changed_model_names_the_fields(tmp_path, tiny_dataset, compilation_cache):  # noqa: F811
    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(train_helpers.tiny_config(tiny_dataset), workdir)
    changed = train_helpers.tiny_config(tiny_dataset, **{"train.num_steps": 8})
    changed.model.width = 48
    with pytest.raises(ValueError, match=r"Cannot resume from the checkpoint of step 4 .*model\.enc_width: 32 -> 48"):
        trainer.train_and_evaluate(changed, workdir)
    assert trainer.config_changes({"a": {"b": 1}}, {"a": {"b": 1}}) == ""
