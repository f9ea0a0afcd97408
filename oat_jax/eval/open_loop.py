"""Open-loop diagnostics of a token policy on held-out (observation, chunk) pairs: where its action error comes from.

For fixed-length tokenizers (OAT, OAT×, QueST-style, Bin):
- `teacher_forced`: per-position accuracy and cross-entropy of the policy given the demonstration's earlier tokens;
- `sample_with_forced_prefix`: the policy's own tokens after the first `num_forced` demonstration tokens (0 = the
  closed-loop case, N = the tokenizer's reconstruction), sampled as in closed loop (temperature, top-k);
- `open_loop_report`: the normalized MSE between decoded chunks and the demonstration over the executed first
  `n_action_steps` steps and over the whole chunk, per number of forced tokens and decoded prefix length k, next to
  the tokenizer's own errors and the per-position entropy of the demonstration tokens.
What an oracle first token buys (forced = 1 vs 0) separates "the policy mispredicts the first token" from "the
tokenizer cannot express the chunk".
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.policy.model import TokenPolicyModel, teacher_forcing
from oat_jax.policy.sampling import SamplingConfig, choose_next


def _model(policy) -> TokenPolicyModel:
    if policy.config.variable_length:
        raise ValueError("open-loop diagnostics need a fixed-length tokenizer (OAT, OAT x, QueST-style, Bin).")
    return TokenPolicyModel(policy.config)


def teacher_forced(policy, obs: Mapping[str, np.ndarray], tokens: np.ndarray) -> dict[str, list[float]]:
    """Per-position accuracy and CE (nats) of the policy on demonstration `tokens` (B, N) int32 given normalized
    observations `obs` (`policy.normalize_observation`) -> {"accuracy": [N], "ce": [N]}."""
    model = _model(policy)
    lengths = jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32)
    inputs, targets, _ = teacher_forcing(jnp.asarray(tokens), lengths, policy.config)
    logits = model.apply({"params": policy.params}, obs, inputs)[..., :policy.config.vocab_size]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    accuracy = jnp.argmax(logits, axis=-1) == targets
    return {"accuracy": np.asarray(accuracy.mean(0)).tolist(), "ce": np.asarray(ce.mean(0)).tolist()}


def sample_with_forced_prefix(policy, obs: Mapping[str, np.ndarray], tokens: np.ndarray, num_forced: int,
                              rng: jax.Array, sampling: SamplingConfig | None = None) -> np.ndarray:
    """Tokens (B, N) int32: positions < `num_forced` copied from `tokens` (the demonstration's), the others drawn
    by the policy one at a time (full forward per position, as `sampling.sample_reference`) with `sampling`
    (default: the policy's own, i.e. the closed-loop setting); key `fold_in(rng, i)` at position i."""
    model, config = _model(policy), policy.config
    sampling = sampling or policy.sampling
    n, b = config.max_tokens, tokens.shape[0]
    demo = jnp.asarray(tokens, jnp.int32)

    @jax.jit
    def run(params, obs, demo, rng):
        inputs = jnp.zeros((b, n), jnp.int32).at[:, 0].set(config.bos_id)
        out = jnp.zeros((b, n), jnp.int32)
        for i in range(n):
            logits = model.apply({"params": params}, obs, inputs)[:, i]
            drawn = choose_next(logits, jax.random.fold_in(rng, i), jnp.int32(i), config, sampling)
            chosen = jnp.where(i < num_forced, demo[:, i], drawn)
            out = out.at[:, i].set(chosen)
            if i + 1 < n:
                inputs = inputs.at[:, i + 1].set(chosen)
        return out

    return np.asarray(run(policy.params, obs, demo, rng))


def _errors(tokenizer, tokens: np.ndarray, k: int, target: np.ndarray, executed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair (executed-steps MSE, whole-chunk MSE), each (B,) float64, in the tokenizer's normalized units of
    decoding tokens[:, :k]."""
    decoded, _ = tokenizer.detokenize(tokens[:, :k])
    err = (np.asarray(tokenizer.normalizer.normalize(decoded), np.float64) - target) ** 2
    return err[:, :executed].mean(axis=(1, 2)), err.mean(axis=(1, 2))


def _entropy(ids: np.ndarray) -> float:
    _, counts = np.unique(ids, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def open_loop_report(policy, actions: np.ndarray, observations: Mapping[str, np.ndarray],
                     forced: Sequence[int] = (0, 1, 2, 4), ks: Sequence[int] | None = None, repeats: int = 2,
                     seed: int = 0, sampling: SamplingConfig | None = None) -> dict:
    """The diagnostics of the module docstring on held-out pairs.

    Args:
      policy: a `TokenPolicy` with a fixed-length tokenizer.
      actions: (B, H, D_a) float32 demonstration chunks (raw units).
      observations: raw observations of those chunks ({"state": (B, K, obs_dim)}, ...).
      forced: numbers of demonstration tokens forced before the policy samples the rest.
      ks: prefix lengths decoded (None: 1, 2, 4, ..., N for an ordered tokenizer's anytime decoding).
      repeats: sampling repeats averaged (keys derived from `seed`).
    Returns:
      {"tokenizer": {"mse_exec"/"mse": {k: float}}, "entropy": [N] nats, "teacher_forced": {"accuracy", "ce"},
       "policy": {"mse_exec"/"mse": {"f{forced}_k{k}": float}, "exec_quantiles": {"f{forced}_k{k}": [median,
       90th percentile] of the per-pair executed MSE (pooled over repeats)}}, "executed": n_action_steps,
       "pairs": B}. The quantiles tell a few large misses (a wrong motion) from a uniform small error.
    """
    tok = policy.tokenizer
    n = tok.max_tokens
    ks = list(ks) if ks else sorted({min(2 ** i, n) for i in range(n.bit_length() + 1)})
    executed = int(policy.n_action_steps)
    target = np.asarray(tok.normalizer.normalize(actions))
    tokens, _ = tok.tokenize(actions)
    tokens = np.asarray(tokens, np.int32)
    obs = policy.normalize_observation(observations)
    report = {"executed": executed, "pairs": int(len(actions)),
              "tokenizer": {"mse_exec": {}, "mse": {}}, "policy": {"mse_exec": {}, "mse": {}, "exec_quantiles": {}},
              "entropy": [_entropy(tokens[:, i]) for i in range(n)],
              "teacher_forced": teacher_forced(policy, obs, tokens)}
    for k in ks:
        exec_err, err = _errors(tok, tokens, k, target, executed)
        report["tokenizer"]["mse_exec"][k], report["tokenizer"]["mse"][k] = float(exec_err.mean()), float(err.mean())
    for f in forced:
        per_pair: dict[int, list] = {k: [] for k in ks}
        for r in range(repeats):
            drawn = sample_with_forced_prefix(policy, obs, tokens, f, jax.random.PRNGKey(seed * 1000 + 10 * r + f),
                                              sampling)
            for k in ks:
                per_pair[k].append(_errors(tok, drawn, k, target, executed))
        for k in ks:
            exec_err = np.concatenate([e for e, _ in per_pair[k]])
            name = f"f{f}_k{k}"
            report["policy"]["mse_exec"][name] = float(exec_err.mean())
            report["policy"]["mse"][name] = float(np.mean([e.mean() for _, e in per_pair[k]]))
            report["policy"]["exec_quantiles"][name] = [float(q) for q in np.quantile(exec_err, [0.5, 0.9])]
    return report
