"""The data side of the VLA example (experiments/examples/vla_integration.py): action chunks of the embedded
Meta-World dataset with their instruction and state, the small OAT tokenizer trained on them when none is given, and
batched tokenization of the chunks with the pure `tokenize_fn`.

Not runnable on its own; launch the example: `python -m experiments.examples.vla_integration`.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from data_pipelines import EMBEDDED_DATASET_DIR, loader


def load_chunks(horizon: int, split: str, limit: int = 0) -> dict:
    """Every chunk of a split ('train' / 'val') of the embedded dataset, as numpy.

    Returns {"actions": (M, H, D_a) float32, "state": (M, 39) float32 (the chunk's first step), "language": (M,)
    str}; with `limit` > 0, a fixed random subset of at most `limit` chunks.
    """
    spec = loader.DatasetSpec(path=EMBEDDED_DATASET_DIR, obs_keys=("observation/state",))
    ds = loader.make_chunk_dataset(spec, split=split, horizon=horizon, batch_size=1024, shuffle=False, repeat=False,
                                   n_obs_steps=1, with_language=True, drop_remainder=False)
    parts = {"actions": [], "state": [], "language": []}
    for batch in ds.as_numpy_iterator():
        parts["actions"].append(batch["actions"])
        parts["state"].append(batch["observation"]["state"][:, 0])
        parts["language"].extend(s.decode() for s in batch["language"])
    chunks = {k: np.concatenate(v) if k != "language" else np.array(v) for k, v in parts.items()}
    if limit:
        keep = np.random.default_rng(0).permutation(len(chunks["actions"]))[:limit]
        chunks = {k: v[keep] for k, v in chunks.items()}
    return chunks


def train_tokenizer(directory: str, steps: int) -> str:
    """Trains the small `runlocal` tokenizer of experiments/configs/oat.py (H=8, N=4, vocabulary 36) for `steps`
    steps on the embedded dataset into the workdir `directory`, unless it already holds `tokenizer/`; returns
    `directory` (a path for `oat_jax.load_pretrained`)."""
    if os.path.isdir(os.path.join(directory, "tokenizer")):
        return directory
    from experiments.configs import oat as oat_configs
    from oat_jax.training import train_and_evaluate
    config = oat_configs.get_config("runlocal")
    config.train.update(num_steps=steps, batch_size=64, eval_every=steps, log_every=max(steps // 4, 1))
    config.optim.update(min_lr_ratio=0.05, warmup_steps=20)
    config.checkpoint.every = steps
    train_and_evaluate(config, directory)
    return directory


def tokenize_all(tokenize_fn, params, actions: np.ndarray, batch: int = 1024) -> np.ndarray:
    """actions (M, H, D_a) float32 -> OAT tokens (M, N) int32, via the pure `tokenize_fn(params, actions)` jitted
    and applied `batch` rows at a time."""
    fn = jax.jit(tokenize_fn)
    out = [np.asarray(fn(params, actions[i:i + batch])) for i in range(0, len(actions), batch)]
    return np.concatenate(out)
