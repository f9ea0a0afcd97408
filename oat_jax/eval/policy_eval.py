"""Closed-loop evaluation of saved policies (token policies with anytime decoding, diffusion policies) on
Meta-World v3: success rates per (k, task, run) with their mean and standard error, and the latency of a policy
call. Policies trained on camera images get frames of `camera` rendered offscreen at their image size (MuJoCo
rendering must not share the process with TensorFlow: this module and its command line never import it).

For each seed s, task and k: `episodes` environments run in lock-step (`rollouts.run_batched_episodes`); episode e
uses goal e mod 50 of `metaworld.MT1(task, seed=10000 + s)` (goals the scripted demonstrations were not generated
from), the sampling key is derived from s, and every environment's observation history goes through ONE batched
policy call. Several policies (training seeds) are evaluated with the same seeds (or, paired, policy i with the
i-th seed only); the mean and standard error are then over training seeds, with one policy over evaluation seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from typing import Callable, Sequence

import jax
import numpy as np

from oat_jax import timing
from oat_jax.eval.rollouts import (first_history, first_image_history, make_metaworld_envs, render_camera,
                                   render_frames, run_batched_episodes, task_instruction)
from oat_jax.policy import load_policy
from oat_jax.policy.policy import TokenPolicy
from oat_jax.policy.sampling import SamplingConfig


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


def _as_obs(history) -> dict:
    """A state history (B, K, obs_dim) or an observation dict -> the observation dict of `policy.act`."""
    return history if isinstance(history, dict) else {"state": history}


def _repeat_obs(obs, batch: int):
    """An observation (dict or state history) of batch 1 repeated to `batch` rows."""
    if isinstance(obs, dict):
        return {k: np.repeat(v, batch, axis=0) for k, v in obs.items()}
    return np.repeat(obs, batch, axis=0)


def _eval_envs(policy, task: str, episodes: int, seed: int, camera: str) -> tuple[list, Callable | None]:
    """(environments, image_fn for `run_batched_episodes` or None): cameras rendered when the policy has them."""
    cams = policy.config.num_cameras
    if not cams:
        return make_metaworld_envs(task, episodes, seed), None
    if not camera or cams != 1:
        raise ValueError(f"The policy reads {cams} camera image(s) of shape {policy.config.image_shape}: give the "
                         f"Meta-World camera it was trained on with --camera (one camera is supported).")
    envs = make_metaworld_envs(task, episodes, seed, camera=camera, image_size=policy.config.image_shape[0])
    return envs, render_camera


def _first_obs(policy, env, image_fn, task: str):
    """The policy input of env's first observation at batch 1 (state history, or a dict with images and the
    task's instruction when the policy reads them)."""
    history = first_history(env.reset()[0][None], policy.config.n_obs_steps)  # (1, K, obs_dim)
    obs = {"state": history}
    if image_fn is not None:
        obs["image"] = first_image_history(render_frames([env], image_fn), policy.config.n_obs_steps)
    obs = _with_instruction(policy, obs, task)
    return obs if len(obs) > 1 else history


def _reads_language(policy) -> bool:
    return bool(getattr(policy.config, "num_instructions", 0))


def _with_instruction(policy, obs, task: str):
    """`obs` (a state history or a dict) with "language" = the task's instruction when the policy reads one."""
    if not _reads_language(policy):
        return obs
    return {**_as_obs(obs), "language": task_instruction(task)}


def measure_latency(policy: TokenPolicy, obs, num_tokens: int | None, repeats: int, seed: int = 0) -> float:
    """Median wall time (ms) of `policy.act` on observations `obs` (state histories (B, K, obs_dim) float32, or
    a dict with "image"), over `repeats` calls (a fresh sampling key each) after one warm-up call
    (`oat_jax.timing.time_calls`)."""
    key = jax.random.PRNGKey(seed)
    counter = itertools.count()
    stats = timing.time_calls(lambda: policy.act(_as_obs(obs), jax.random.fold_in(key, next(counter)), num_tokens),
                              repeats, warmup=1)
    return 1000.0 * stats["median_s"]


def _actor(policy: TokenPolicy, base: jax.Array, k: int | None, tokens_used: list, task: str) -> Callable:
    """histories (B, K, obs_dim) (or {"state", "image"} histories) -> (actions (B, H, D_a) float32, valid (B,)
    bool), a fresh key per call, with `task`'s instruction when the policy reads one; appends the mean number of
    generated tokens of each call to `tokens_used` (0 for a diffusion policy)."""
    counter = itertools.count(1)

    def act(history):
        history = _with_instruction(policy, history, task)
        if not hasattr(policy, "tokenizer"):  # a diffusion policy: no tokens
            tokens_used.append(0.0)
            return policy.act(_as_obs(history), jax.random.fold_in(base, next(counter)))
        tokens, lengths = policy.sample_tokens(_as_obs(history), jax.random.fold_in(base, next(counter)), k)
        tokens_used.append(float(np.mean(lengths)))
        actions, valid = policy.tokenizer.detokenize(tokens, lengths)
        return np.asarray(actions, np.float32), np.asarray(valid, bool)

    return act


def _with_sampling(policy, path: str, temperature: float | None, top_k: int | None):
    """`policy` drawing tokens with its saved settings, `temperature` / `top_k` replaced where not None."""
    if temperature is None and top_k is None:
        return policy
    if not isinstance(policy, TokenPolicy):
        raise ValueError(f"{path} holds a diffusion policy, which samples no tokens: --temperature / --top_k do not "
                         f"apply to it.")
    changes = {}
    if temperature is not None:
        changes["temperature"] = float(temperature)
    if top_k is not None:
        changes["top_k"] = int(top_k)
    return policy.with_sampling(dataclasses.replace(policy.sampling, **changes))


def evaluate(workdirs: Sequence[str], tasks: Sequence[str], episodes: int, seeds: Sequence[int],
             num_tokens: Sequence[int | None], max_steps: int, latency_repeats: int = 20, label: str = "",
             log: Callable[[str], None] = print, paired: bool = False, camera: str = "",
             temperature: float | None = None, top_k: int | None = None) -> dict:
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
      camera: the Meta-World camera rendered for policies trained on images ('' for state-only policies).
      temperature, top_k: override the token policies' saved sampling settings (None keeps each one's own).
    Returns:
      The JSON-able results: {"label", "workdirs", "tasks", "episodes", "seeds", "paired", "max_steps", "wall_s",
      "sampling" (the settings used; None for diffusion policies),
      "by_k": {str(k): {"per_task": {task: {"mean", "se", "per_run"}}, "mean", "se", "per_run", "se_over",
      "latency_ms_batch", "latency_ms_b1", "invalid_rate", "mean_tokens"}}}.
    """
    if paired and len(seeds) != len(workdirs):
        raise ValueError(f"--paired needs one evaluation seed per workdir: {len(workdirs)} workdirs, seeds {seeds}.")
    clock = timing.Stopwatch()
    policies = [_with_sampling(load_policy(w), w, temperature, top_k) for w in workdirs]
    label = label or policies[0].label
    used = getattr(policies[0], "sampling", None)
    if not hasattr(policies[0], "tokenizer") and any(k is not None for k in num_tokens):
        raise ValueError(f"num_tokens={list(num_tokens)}: {workdirs[0]} holds a diffusion policy, which generates no "
                         f"tokens; evaluate it without --num_tokens.")
    results: dict = {"label": label, "camera": camera, "workdirs": list(workdirs), "tasks": list(tasks),
                     "episodes": episodes,
                     "seeds": list(seeds), "paired": paired, "max_steps": max_steps,
                     "sampling": dataclasses.asdict(used) if used is not None else None, "by_k": {}}
    for k in num_tokens:
        key_k = str(k if k is not None else getattr(policies[0].config, "max_tokens", 0))  # "0": no tokens (DP)
        per_task = {t: [] for t in tasks}
        call_ms, invalid, tokens_used = [], [], []
        sample_obs = None
        for w, policy in enumerate(policies):
            for seed in ([seeds[w]] if paired else seeds):
                for ti, task in enumerate(tasks):
                    envs, image_fn = _eval_envs(policy, task, episodes, seed, camera)
                    act = _actor(policy, jax.random.fold_in(jax.random.PRNGKey(seed), 1000 * w + ti), k, tokens_used,
                                 task)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out = run_batched_episodes(envs, act, policy.config.n_obs_steps, policy.n_action_steps,
                                                   max_steps, image_fn=image_fn)
                    rate = float(np.mean(out["success"]))
                    per_task[task].append(rate)
                    call_ms.extend(1000.0 * np.asarray(out["call_seconds"][1:]))  # first call may compile
                    invalid.append(out["invalid_rate"])
                    if sample_obs is None:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            sample_obs = _first_obs(policy, envs[0], image_fn, task)
                    for env in envs:
                        env.close()
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
        if res.get("sampling"):  # the settings the evaluation used
            policy = policy.with_sampling(SamplingConfig(**res["sampling"]))
        envs, image_fn = _eval_envs(policy, res["tasks"][0], 1, res["seeds"][0], res.get("camera", ""))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = _first_obs(policy, envs[0], image_fn, res["tasks"][0])  # batch 1
        envs[0].close()
        batch = _repeat_obs(history, res["episodes"])
        for key_k, entry in res["by_k"].items():
            k = int(key_k) or None  # 0: a diffusion policy
            entry["latency_ms_b1"] = measure_latency(policy, history, k, repeats)
            entry["latency_ms_batch"] = measure_latency(policy, batch, k, repeats)
            log(f"{res['label']} k={key_k}: {entry['latency_ms_b1']:.2f} ms at batch 1, "
                f"{entry['latency_ms_batch']:.2f} ms at batch {res['episodes']}")
