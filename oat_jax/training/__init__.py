"""Training of OAT tokenizers and token policies: Optax loop over a device mesh, Orbax checkpoints, held-out
evaluation, plots (`runner.Runner` is the shape both trainers share).

Entry point: `train_and_evaluate(config, workdir)` (see experiments/configs/oat.py and experiments/train.py).
It is imported lazily: the loop pulls in TensorFlow (through `data_pipelines`), the other modules here do not.
"""

__all__ = ["train_and_evaluate"]


def __getattr__(name):
    if name == "train_and_evaluate":
        from oat_jax.training.tokenizer_trainer import train_and_evaluate
        return train_and_evaluate
    raise AttributeError(f"module 'oat_jax.training' has no attribute {name!r}")
