"""Training of OAT tokenizers and policies: Optax loop over a device mesh, Orbax checkpoints, held-out evaluation,
plots. Each trainer module has `train_and_evaluate(config, workdir)` whose loop reads top to bottom:
`tokenizer_trainer` (experiments/configs/oat.py), `policy_trainer` and `diffusion_trainer`
(experiments/configs/policy.py); `loop` holds the pieces they share.

`oat_jax.training.train_and_evaluate` is the tokenizer's.
It is imported lazily: the loop pulls in TensorFlow (through `data_pipelines`), the other modules here do not.
"""

__all__ = ["train_and_evaluate"]


def __getattr__(name):
    if name == "train_and_evaluate":
        from oat_jax.training.tokenizer.trainer import train_and_evaluate
        return train_and_evaluate
    raise AttributeError(f"module 'oat_jax.training' has no attribute {name!r}")
