"""Autoregressive sampling of action tokens: preallocated KV cache, one `lax.while_loop`, compiled once.

`make_sampler(config, sampling)` returns a jitted `sample(params, obs, rng, num_tokens)`; the number of tokens to
generate (anytime decoding, OAT_k) is a traced int32 scalar, so every k shares one compiled function per batch
shape and the loop runs only k steps. For variable-length tokenizers (FAST) the loop also stops once every row
has produced EOS. `sample_reference` decodes the same way but re-runs the full sequence forward at every step
(no cache): the cache-free reference the cached sampler is tested against.

Per step i the key is `fold_in(rng, i)`; logits are processed by `choose_next`: BOS (and EOS at step 0, so a
sequence has at least one token) are masked out, then temperature and top-k are applied. Temperature 0 is greedy.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.action_tokenizers.protocol import PAD_ID
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel, init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How next tokens are drawn. The paper samples with temperature 1.0 and top-k 10."""

    temperature: float = 1.0  # softmax temperature; 0 = greedy (argmax).
    top_k: int = 10  # sample among the k most likely ids only (0 = all ids).

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 = no top-k), got {self.top_k}.")


def allowed_ids(config: PolicyConfig, step: jax.Array) -> jax.Array:
    """(embed_size,) bool: ids that may be sampled at decoding step `step` (BOS never; EOS not at step 0)."""
    ids = jnp.arange(config.embed_size)
    ok = ids < config.vocab_size
    if config.variable_length:
        ok = ok | ((ids == config.eos_id) & (step > 0))
    return ok


def choose_next(logits: jax.Array, key: jax.Array, step: jax.Array, config: PolicyConfig,
                sampling: SamplingConfig) -> jax.Array:
    """Next ids from logits (B, embed_size) float32 at decoding step `step` -> (B,) int32.

    Special ids are masked (see `allowed_ids`); with top_k > 0 only the top_k remaining ids can be drawn.
    """
    logits = jnp.where(allowed_ids(config, step)[None, :], logits, -jnp.inf)
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        values, indices = jax.lax.top_k(logits, sampling.top_k)  # (B, top_k)
        choice = jax.random.categorical(key, values, axis=-1)
        return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _record(config: PolicyConfig, step, ids, tokens, lengths, done):
    """Writes the ids drawn at `step` into the (B, N) token buffer; returns (tokens, lengths, done)."""
    is_eos = (ids == config.eos_id) if config.variable_length else jnp.zeros_like(done)
    write = ~done & ~is_eos
    column = jnp.arange(config.max_tokens)[None, :] == step
    tokens = jnp.where(write[:, None] & column, ids[:, None], tokens)
    return tokens, lengths + write.astype(jnp.int32), done | is_eos


def _limit(config: PolicyConfig, num_tokens) -> jax.Array:
    k = jnp.asarray(config.max_tokens if num_tokens is None else num_tokens, jnp.int32)
    return jnp.clip(k, 1, config.max_tokens)


def sample_tokens(model: TokenPolicyModel, params, obs, rng: jax.Array, num_tokens=None,
                  sampling: SamplingConfig = SamplingConfig()) -> tuple[jax.Array, jax.Array]:
    """Cached autoregressive sampling (pure; jit it, or use `make_sampler`).

    Args:
      model: `TokenPolicyModel(config)`.
      params: its "params" collection.
      obs: observation dict, batch B (see `TokenPolicyModel.encode`).
      rng: PRNG key.
      num_tokens: None (= N) or an int / int32 scalar k in 1..N (clipped): generate at most k tokens (OAT_k).
    Returns:
      tokens (B, N) int32 with PAD_ID past each length, lengths (B,) int32 in 1..k.
    """
    c = model.config
    variables = {"params": params}
    memory = model.apply(variables, obs, method=TokenPolicyModel.encode)
    mem_kv = model.apply(variables, memory, method=TokenPolicyModel.memory_kv)
    batch = memory.shape[0]
    limit = _limit(c, num_tokens)

    def cond(state):
        step, _, _, _, done, _ = state
        return (step < limit) & ~jnp.all(done)

    def body(state):
        step, ids, tokens, lengths, done, cache = state
        logits, cache = model.apply(variables, ids, step, cache, mem_kv, method=TokenPolicyModel.decode_step)
        ids = choose_next(logits, jax.random.fold_in(rng, step), step, c, sampling)
        tokens, lengths, done = _record(c, step, ids, tokens, lengths, done)
        return step + 1, ids, tokens, lengths, done, cache

    state = (jnp.zeros((), jnp.int32), jnp.full((batch,), c.bos_id, jnp.int32),
             jnp.full((batch, c.max_tokens), PAD_ID, jnp.int32), jnp.zeros((batch,), jnp.int32),
             jnp.zeros((batch,), bool), init_cache(c, batch))
    _, _, tokens, lengths, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens, lengths


@functools.lru_cache(maxsize=8)
def _reference_step(model: TokenPolicyModel, sampling: SamplingConfig) -> Callable:
    """Jitted: full forward over all S positions, then the ids chosen at `step`."""
    def step_fn(params, obs, inputs, step, rng):
        logits = model.apply({"params": params}, obs, inputs)
        row = jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False)
        return choose_next(row, jax.random.fold_in(rng, step), step, model.config, sampling)
    return jax.jit(step_fn)


def sample_reference(model: TokenPolicyModel, params, obs, rng: jax.Array, num_tokens=None,
                     sampling: SamplingConfig = SamplingConfig()) -> tuple[jax.Array, jax.Array]:
    """Cache-free sampling: at every step the full teacher-forced forward over all S positions (later positions
    hold zeros and are hidden by the causal mask). Same keys and outputs as `sample_tokens`; O(S^2) work, for
    tests and debugging only. Python loop (num_tokens must be a Python int or None)."""
    c = model.config
    batch = jax.tree.leaves(obs)[0].shape[0]
    limit = int(_limit(c, num_tokens))
    inputs = jnp.zeros((batch, c.seq_len), jnp.int32).at[:, 0].set(c.bos_id)
    tokens = np.full((batch, c.max_tokens), PAD_ID, np.int32)
    lengths, done = np.zeros((batch,), np.int32), np.zeros((batch,), bool)
    step_fn = _reference_step(model, sampling)
    for step in range(limit):
        ids = np.asarray(step_fn(params, obs, inputs, jnp.int32(step), rng))
        is_eos = (ids == c.eos_id) if c.variable_length else np.zeros_like(done)
        write = ~done & ~is_eos
        tokens[write, step] = ids[write]
        lengths += write
        done |= is_eos
        if step + 1 < c.seq_len:
            inputs = inputs.at[:, step + 1].set(ids)
        if done.all():
            break
    return jnp.asarray(tokens), jnp.asarray(lengths)


def whole_number(value, name: str) -> int:
    """`value` as an int; ValueError for a bool or a number with a fractional part (2.5 is not silently 2)."""
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not (numeric and float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return int(value)


class Sampler:
    """Jitted `sample_tokens` for one (config, sampling); `trace_count` counts compilations (one per batch shape).

    Call: `sampler(params, obs, rng, num_tokens=None) -> (tokens (B, N) int32, lengths (B,) int32)`.
    """

    def __init__(self, config: PolicyConfig, sampling: SamplingConfig = SamplingConfig()):
        self.config, self.sampling = config, sampling
        self.model = TokenPolicyModel(config)
        self.trace_count = 0

        def traced(params, obs, rng, num_tokens):
            self.trace_count += 1
            return sample_tokens(self.model, params, obs, rng, num_tokens, sampling)

        self._fn = jax.jit(traced)

    def __call__(self, params, obs, rng: jax.Array, num_tokens=None) -> tuple[jax.Array, jax.Array]:
        k = self.config.max_tokens if num_tokens is None else whole_number(num_tokens, "num_tokens")
        if not 1 <= k <= self.config.max_tokens:
            raise ValueError(f"num_tokens={k} is out of range: generate between 1 and max_tokens="
                             f"{self.config.max_tokens} tokens.")
        return self._fn(params, obs, rng, jnp.int32(k))


@functools.lru_cache(maxsize=16)
def make_sampler(config: PolicyConfig, sampling: SamplingConfig = SamplingConfig()) -> Sampler:
    """The shared `Sampler` of (config, sampling): policies with equal configs (e.g. the same policy loaded twice)
    reuse one compiled function. One compilation serves every num_tokens."""
    return Sampler(config, sampling)

