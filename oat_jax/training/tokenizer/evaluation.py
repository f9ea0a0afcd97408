"""Held-out evaluation: reconstruction MSE for every prefix length k = 1..N (normalized and raw units) and
codebook usage (fraction of the vocabulary used, perplexity of the token distribution at each position).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.action_tokenizers import metrics
from oat_jax.model import OATModel
from oat_jax.normalizer import Normalizer


def make_eval_step(model: OATModel, normalizer: Normalizer) -> Callable[[Any, dict], dict]:
    """Builds `eval_step(params, batch) -> sums` (pure; jit it with shardings outside).

    Args (of the returned function):
      params: float32 param tree (the EMA params).
      batch: {"actions": (B, H, D_a) float32 raw units, "weights": (B,) float32, 1 for real examples and 0 for
        padding rows}.
    Returns (sums over the batch, to be added over batches):
      {"se_norm": (N,) f32, "se_raw": (N,) f32: weighted sums of per-example MSE for k = 1..N,
       "count": () f32: sum of weights, "hist": (N, V) f32: weighted token counts per position}.
    """
    c = model.config
    num_tokens, vocab = c.num_tokens, c.vocab_size

    def eval_step(params, batch):
        actions, weights = batch["actions"], batch["weights"]
        variables = {"params": params}
        x = normalizer.normalize(actions)
        tokens = model.apply(variables, x, method=OATModel.tokenize)
        batch = tokens.shape[0]

        def per_k(k):
            recon = model.apply(variables, tokens, jnp.full((batch,), k, jnp.int32), method=OATModel.detokenize)
            err_norm = jnp.mean(jnp.square(recon - x), axis=(1, 2))
            err_raw = jnp.mean(jnp.square(normalizer.unnormalize(recon) - actions), axis=(1, 2))
            return jnp.sum(weights * err_norm), jnp.sum(weights * err_raw)

        se_norm, se_raw = jax.lax.map(per_k, jnp.arange(1, num_tokens + 1, dtype=jnp.int32))
        positions = jnp.broadcast_to(jnp.arange(num_tokens), tokens.shape)
        hist = jnp.zeros((num_tokens, vocab), jnp.float32).at[positions, tokens].add(
            jnp.broadcast_to(weights[:, None], tokens.shape))
        return {"se_norm": se_norm, "se_raw": se_raw, "count": jnp.sum(weights), "hist": hist}

    return eval_step


def summarize(sums: dict) -> dict[str, float]:
    """Turns accumulated eval sums into named scalar metrics.

    Returns:
      {"mse_norm/k{k}", "mse_raw/k{k}" for k = 1..N, "codebook/usage" (fraction of the vocabulary used at any
       position), "codebook/usage_pos{i}", "codebook/perplexity_pos{i}" (exp of the entropy of the token
       distribution at position i; V means uniform use), "val_mse" (= normalized MSE with all N tokens)}.
    """
    count = float(sums["count"])
    if count <= 0:
        raise ValueError("Evaluation saw no examples: the validation split is empty. Check config.data.val_fraction "
                         "and the dataset size.")
    se_norm, se_raw = np.asarray(sums["se_norm"], np.float64), np.asarray(sums["se_raw"], np.float64)
    hist = np.asarray(sums["hist"], np.float64)
    out = {}
    for k in range(1, len(se_norm) + 1):
        out[f"mse_norm/k{k}"] = se_norm[k - 1] / count
        out[f"mse_raw/k{k}"] = se_raw[k - 1] / count
    vocab = hist.shape[1]
    out["codebook/usage"] = float(np.count_nonzero(hist.sum(0))) / vocab
    perplexity = np.exp2(np.nan_to_num(metrics.entropy_bits(hist), nan=0.0))  # 1 at positions never reached
    for i, h in enumerate(hist):
        out[f"codebook/usage_pos{i}"] = float(np.count_nonzero(h)) / vocab
        out[f"codebook/perplexity_pos{i}"] = float(perplexity[i])
    out["val_mse"] = out[f"mse_norm/k{len(se_norm)}"]
    return out


def mse_curves(metrics: dict[str, float], num_tokens: int, prefix: str = "") -> tuple[list[float], list[float]]:
    """(normalized MSE, raw MSE) lists for k = 1..N out of `summarize`'s dict (keys `{prefix}mse_norm/k{k}`)."""
    return ([metrics[f"{prefix}mse_norm/k{k}"] for k in range(1, num_tokens + 1)],
            [metrics[f"{prefix}mse_raw/k{k}"] for k in range(1, num_tokens + 1)])
