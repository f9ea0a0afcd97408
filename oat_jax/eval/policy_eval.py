"""Closed-loop evaluation of saved token policies on Meta-World v3 (state observations) with anytime decoding:
success rates per (k, task, run) with their mean and standard error, and the latency of a policy call.

For each seed s, task and k: `episodes` environments run in lock-step (`rollouts.run_batched_episodes`); episode e
uses goal e mod 50 of `metaworld.MT1(task, seed=10000 + s)` (goals the scripted demonstrations were not generated
from), the sampling key is derived from s, and every environment's observation history goes through ONE batched
policy call. Several policies (training seeds) are evaluated with the same seeds (or, paired, policy i with the
i-th seed only); the mean and standard error are then over training seeds, with one policy over evaluation seeds.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Callable, Sequence

import jax
import numpy as np

from oat_jax import timing
from oat_jax.eval.rollouts import first_history, make_metaworld_envs, run_batched_episodes
from oat_jax.policy import load_policy
from oat_jax.policy.policy import TokenPolicy


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (std with ddof=1 / sqrt(n); 0 for a single value) of n >= 1 floats."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def group_means(per_run: Sequence[float], num_policies: int) -> list[float]:
    """Per-run values ordered (policy, seed) -> one mean per policy (training seed) when there are several policies,
    else the per-run values (evaluation seeds): the units the standard error is taken over."""
    if num_policies <= 1:
        return list(per_run)
    return [float(v) for v in np.asarray(per_run, np.float64).reshape(num_policies, -1).mean(axis=1)]


def measure_latency(policy: TokenPolicy, obs: np.ndarray, num_tokens: int | None, repeats: int,
                    seed: int = 0) -> float:
    """Median wall time (ms) of `policy.act` on state histories obs (B, K, obs_dim) float32, over `repeats` calls
    (a fresh sampling key each) after one warm-up call (`oat_jax.timing.time_calls`)."""
    key = jax.random.PRNGKey(seed)
    counter = itertools.count()
    stats = timing.time_calls(lambda: policy.act({"state": obs}, jax.random.fold_in(key, next(counter)), num_tokens),
                              repeats, warmup=1)
    return 1000.0 * stats["median_s"]


def _actor(policy: TokenPolicy, base: jax.Array, k: int | None, tokens_used: list) -> Callable:
    """histories (B, K, obs_dim) -> (actions (B, H, D_a) float32, valid (B,) bool), a fresh key per call; appends
    the mean number of generated tokens of each call to `tokens_used` (0 for a diffusion policy)."""
    counter = itertools.count(1)

    def act(history):
        if not hasattr(policy, "tokenizer"):  # a diffusion policy: no tokens
            tokens_used.append(0.0)
            return policy.act({"state": history}, jax.random.fold_in(base, next(counter)))
        tokens, lengths = policy.sample_tokens({"state": history}, jax.random.fold_in(base, next(counter)), k)
        tokens_used.append(float(np.mean(lengths)))
        actions, valid = policy.tokenizer.detokenize(tokens, lengths)
        return np.asarray(actions, np.float32), np.asarray(valid, bool)

    return act


def evaluate(workdirs: Sequence[str], tasks: Sequence[str], episodes: int, seeds: Sequence[int],
             num_tokens: Sequence[int | None], max_steps: int, latency_repeats: int = 20, label: str = "",
             log: Callable[[str], None] = print, paired: bool = False) -> dict:
    """Closed-loop success per (k, task, run) and latency per k (see the module docstring).

    Args:
      workdirs: policy directories or training workdirs holding `policy/` (`TokenPolicy.load`), one per training
        seed.
      tasks: Meta-World v3 task names; episodes: parallel environments per task and seed.
      seeds: evaluation seeds (goals and sampling keys).
      num_tokens: k values of anytime decoding (None = all max_tokens).
      max_steps: step limit of an episode; latency_repeats: timed calls at batch 1 per k.
      label: name in tables (default: the tokenizer's name); log: progress lines.
      paired: workdir i runs on seeds[i] only (len(seeds) == len(workdirs)); otherwise every workdir on every seed.
    Returns:
      The JSON-able results: {"label", "workdirs", "tasks", "episodes", "seeds", "paired", "max_steps", "wall_s",
      "by_k": {str(k): {"per_task": {task: {"mean", "se", "per_run"}}, "mean", "se", "per_run", "se_over",
      "latency_ms_batch", "latency_ms_b1", "invalid_rate", "mean_tokens"}}}.
    """
    if paired and len(seeds) != len(workdirs):
        raise ValueError(f"--paired needs one evaluation seed per workdir: {len(workdirs)} workdirs, seeds {seeds}.")
    clock = timing.Stopwatch()
    policies = [load_policy(w) for w in workdirs]
    label = label or policies[0].label
    if not hasattr(policies[0], "tokenizer") and any(k is not None for k in num_tokens):
        raise ValueError(f"num_tokens={list(num_tokens)}: {workdirs[0]} holds a diffusion policy, which generates no "
                         f"tokens; evaluate it without --num_tokens.")
    results: dict = {"label": label, "workdirs": list(workdirs), "tasks": list(tasks), "episodes": episodes,
                     "seeds": list(seeds), "paired": paired, "max_steps": max_steps, "by_k": {}}
    for k in num_tokens:
        key_k = str(k if k is not None else getattr(policies[0].config, "max_tokens", 0))  # "0": no tokens (DP)
        per_task = {t: [] for t in tasks}
        call_ms, invalid, tokens_used = [], [], []
        sample_obs = None
        for w, policy in enumerate(policies):
            for seed in ([seeds[w]] if paired else seeds):
                for ti, task in enumerate(tasks):
                    envs = make_metaworld_envs(task, episodes, seed)
                    act = _actor(policy, jax.random.fold_in(jax.random.PRNGKey(seed), 1000 * w + ti), k, tokens_used)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out = run_batched_episodes(envs, act, policy.config.n_obs_steps, policy.n_action_steps,
                                                   max_steps)
                    rate = float(np.mean(out["success"]))
                    per_task[task].append(rate)
                    call_ms.extend(1000.0 * np.asarray(out["call_seconds"][1:]))  # first call may compile
                    invalid.append(out["invalid_rate"])
                    if sample_obs is None:
                        sample_obs = first_history(envs[0].reset()[0][None], policy.config.n_obs_steps)
                    log(f"{label} k={key_k} run={w} seed={seed} {task}: success {rate:.3f} "
                        f"({int(np.sum(out['success']))}/{episodes}), {out['calls']} calls, "
                        f"{clock.elapsed():.0f}s elapsed")
        runs = len(policies) * (1 if paired else len(seeds))
        run_means = [float(np.mean([per_task[t][r] for t in tasks])) for r in range(runs)]
        mean, se = mean_se(group_means(run_means, len(policies)))
        entry = {"per_task": {t: dict(zip(("mean", "se"), mean_se(group_means(v, len(policies)))), per_run=v)
                              for t, v in per_task.items()},
                 "mean": mean, "se": se, "per_run": run_means,
                 "se_over": "training seeds" if len(policies) > 1 else "evaluation seeds",
                 "latency_ms_batch": float(np.median(call_ms)) if call_ms else float("nan"),
                 "latency_ms_b1": measure_latency(policies[0], sample_obs, k, latency_repeats),
                 "invalid_rate": float(np.mean(invalid)), "mean_tokens": float(np.mean(tokens_used))}
        results["by_k"][key_k] = entry
        log(f"{label} k={key_k}: success {100 * mean:.1f} ± {100 * se:.1f} %, latency batch "
            f"{entry['latency_ms_batch']:.1f} ms / batch-1 {entry['latency_ms_b1']:.1f} ms")
    results["wall_s"] = clock.elapsed()
    return results


def remeasure_latency(results: Sequence[dict], repeats: int, log: Callable[[str], None] = print) -> None:
    """Replace latency_ms_b1 / latency_ms_batch of every (policy, k) in `results` (`evaluate`'s dicts, in place)
    with fresh timings.

    Closed-loop latencies are taken while the environments run (and possibly beside other jobs); this re-times
    `policy.act` of each result's first workdir on one real observation of its first task, at batch 1 and at the
    evaluation batch (`episodes`), with the median of `repeats` calls after a warm-up call.
    """
    for res in results:
        policy = load_policy(res["workdirs"][0])
        env = make_metaworld_envs(res["tasks"][0], 1, res["seeds"][0])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = first_history(env.reset()[0][None], policy.config.n_obs_steps)  # (1, K, obs_dim)
        batch = np.repeat(history, res["episodes"], axis=0)  # (episodes, K, obs_dim)
        for key_k, entry in res["by_k"].items():
            k = int(key_k) or None  # 0: a diffusion policy
            entry["latency_ms_b1"] = measure_latency(policy, history, k, repeats)
            entry["latency_ms_batch"] = measure_latency(policy, batch, k, repeats)
            log(f"{res['label']} k={k}: {entry['latency_ms_b1']:.2f} ms at batch 1, "
                f"{entry['latency_ms_batch']:.2f} ms at batch {res['episodes']}")
