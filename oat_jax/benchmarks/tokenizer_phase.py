"""The tokenizer benchmark phase: tokenize / detokenize latency and throughput for every model, dtype, batch and
prefix length k.

Rows with api='jit' time the pure functions (`tok.tokenize_fn(params, actions)` / `tok.detokenize_fn(params,
tokens, lengths)`, AOT-compiled under `jax.jit`, params passed); api='python' rows time the validated API
(`tok.tokenize` / `tok.detokenize` on numpy inputs, whatever they return) at the latency batch: host checks,
padding of the k given tokens to N, transfer and the jitted call. Their difference is the API's overhead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from oat_jax import timing
from oat_jax.benchmarks.costs import flops_of, rate_fields
from oat_jax.benchmarks.inputs import oat_config, random_normalizer
from oat_jax.tokenizer import OATTokenizer


def _time(config: ml_collections.ConfigDict, run, repeats: int, warmup: bool = True) -> dict[str, float]:
    return timing.time_calls(run, repeats, config.max_seconds, warmup=config.warmup if warmup else 0,
                             block=jax.block_until_ready)


def _time_tokenizer(config, tok: OATTokenizer, name: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Rows for one tokenizer: the pure jitted functions at every batch and k, the Python API at the latency
    batch."""
    c, t = tok.config, config.tokenizer
    params = tok.params
    ks = [k for k in t.prefix_lengths if k <= c.num_tokens]
    rows = []
    base = {"model": name, "action_dim": c.action_dim, "dtype": c.dtype}
    for batch in [int(t.latency_batch)] + [int(b) for b in t.throughput_batches]:
        repeats = t.latency_repeats if batch == t.latency_batch else t.throughput_repeats
        actions_np = rng.uniform(-2.0, 2.0, (batch, c.horizon, c.action_dim)).astype(np.float32)
        actions = jnp.asarray(actions_np)
        tokenize = jax.jit(tok.tokenize_fn).lower(params, actions).compile()
        stats = _time(config, lambda: tokenize(params, actions), repeats)
        rows.append({**base, "op": "tokenize", "api": "jit", "batch": batch, "k": None, **stats,
                     **rate_fields(stats, flops_of(tokenize), batch)})
        tokens = tokenize(params, actions)  # (batch, N) int32
        lengths = jnp.full((batch,), c.num_tokens, jnp.int32)
        detokenize = jax.jit(tok.detokenize_fn).lower(params, tokens, lengths).compile()  # one for every k
        flops = flops_of(detokenize)
        timing.warm_up(lambda: detokenize(params, tokens, lengths), config.warmup, config.max_seconds,
                       block=jax.block_until_ready)
        for k in ks:
            lengths = jnp.full((batch,), k, jnp.int32)
            stats = _time(config, lambda: detokenize(params, tokens, lengths), repeats, warmup=False)
            rows.append({**base, "op": "detokenize", "api": "jit", "batch": batch, "k": k, **stats,
                         **rate_fields(stats, flops, batch)})
        if batch != t.latency_batch:
            continue
        tokens_np = np.asarray(tokens)
        stats = _time(config, lambda: tok.tokenize(actions_np), t.api_repeats)
        rows.append({**base, "op": "tokenize", "api": "python", "batch": batch, "k": None, **stats,
                     **rate_fields(stats, None, batch)})
        timing.warm_up(lambda: tok.detokenize(tokens_np), config.warmup, config.max_seconds,
                       block=jax.block_until_ready)
        for k in ks:
            prefix = tokens_np[:, :k]
            stats = _time(config, lambda: tok.detokenize(prefix), t.api_repeats, warmup=False)
            rows.append({**base, "op": "detokenize", "api": "python", "batch": batch, "k": k, **stats,
                         **rate_fields(stats, None, batch)})
    return rows


@jax.jit
def _perturb(params, key: jax.Array):
    """params + N(0, 0.02^2) noise on every leaf (one compiled function for the whole tree)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
                                        for x, k in zip(leaves, keys)])


def run_tokenizer(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Tokenize/detokenize latency (batch 1) and throughput for every model (`config.tokenizer.action_dims`), dtype
    and prefix length k: {"results": [row dicts]} (see the module docstring for the api='jit' / 'python' rows)."""
    rng = np.random.default_rng(config.seed)
    rows = []
    for name, action_dim in config.tokenizer.action_dims.items():
        for dtype in config.tokenizer.dtypes:
            c = oat_config(config, int(action_dim), dtype)
            tok = OATTokenizer.init(c, jax.random.key(config.seed), random_normalizer(rng, c.action_dim))
            # Untrained params have zero heads (every token the centre code); perturb them so the timed run is
            # representative (no all-zero shortcuts).
            params = _perturb(tok.params, jax.random.key(config.seed + 1))
            tok = OATTokenizer(c, params, tok.normalizer)
            rows += _time_tokenizer(config, tok, name, rng)
    return {"results": rows}
