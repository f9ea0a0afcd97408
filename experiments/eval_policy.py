r"""Closed-loop evaluation of token policies on Meta-World v3 (state observations), with anytime decoding.

  python -m experiments.eval_policy --workdir=runs/policy_oat --label=OAT \
      --tasks=box-close-v3,coffee-pull-v3,disassemble-v3,stick-pull-v3 --episodes=50 --seeds=0,1,2 \
      --num_tokens=1,2,4,8 --output=runs/eval/oat
  python -m experiments.eval_policy --merge=runs/eval/oat/results.json,runs/eval/bin/results.json \
      --output=runs/eval/table [--remeasure_latency]

For each seed s, task and k in --num_tokens ('' = all max_tokens), `--episodes` environments run in lock-step:
episode e uses goal e mod 50 of `metaworld.MT1(task, seed=10000 + s)` (goals the scripted demonstrations were not
generated from; those use seeds 0, 1000, ...), the sampling key is derived from s, every environment's observation
history goes through ONE batched policy call, and the first `n_action_steps` actions of each chunk are executed
before re-planning. An episode succeeds when any step reports success (it then stops); it fails at --max_steps.
A chunk that does not decode (FAST) makes that environment hold still (zero action) until the next re-plan.
Several --workdir entries (comma-separated: training seeds) are evaluated with the same seeds (or, with --paired,
workdir i with the i-th seed only); the mean and standard error are then over training seeds (each one's success
rate averaged over tasks and its evaluation seeds); with one workdir they are over evaluation seeds.
Latency: wall time of one policy call (sampling + detokenization, after compilation) at the evaluation batch and
at batch 1 (--remeasure_latency re-times them when merging, once the machine is otherwise idle).
Outputs in --output: results.json, results.md, success_vs_k.png (merge: table.md, table.json, plot).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

PAPER_TASKS = ("box-close-v3", "coffee-pull-v3", "disassemble-v3", "stick-pull-v3")
EVAL_BENCHMARK_SEED = 10_000  # MT1 seed offset of the evaluation goals (demonstrations use 0, 1000, 2000, ...)

_WORKDIR = flags.DEFINE_string("workdir", None, "Policy workdir(s) or policy dir(s), comma-separated.")
_LABEL = flags.DEFINE_string("label", "", "Name of the policy in tables (default: the tokenizer name).")
_TASKS = flags.DEFINE_string("tasks", ",".join(PAPER_TASKS), "Comma-separated Meta-World v3 tasks.")
_EPISODES = flags.DEFINE_integer("episodes", 50, "Episodes (parallel environments) per task and seed.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated evaluation seeds (goals and sampling keys).")
_NUM_TOKENS = flags.DEFINE_string("num_tokens", "", "Comma-separated k for anytime decoding ('' = all tokens).")
_PAIRED = flags.DEFINE_bool("paired", False,
                            "Evaluate the i-th --workdir on the i-th --seeds entry only (training seed i on evaluation "
                            "seed i) instead of every workdir on every seed; needs as many seeds as workdirs.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 500, "Step limit of an episode (Meta-World's 500).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for results.json / results.md / success_vs_k.png.")
_MERGE = flags.DEFINE_string("merge", "", "Comma-separated results.json files to merge into one table.")
_LATENCY_REPEATS = flags.DEFINE_integer("latency_repeats", 20, "Timed policy calls at batch 1 per k.")
_REMEASURE = flags.DEFINE_bool("remeasure_latency", False,
                               "With --merge: time every policy again (batch 1 and the evaluation batch) before "
                               "writing the table, e.g. once no evaluation runs beside it any more.")


# ----- batched closed-loop rollouts (any environments with the gymnasium API) -----
def first_history(obs: np.ndarray, n_obs_steps: int) -> np.ndarray:
    """First observations (B, obs_dim) -> history (B, K, obs_dim) float32 repeating them (as in training)."""
    return np.repeat(np.asarray(obs, np.float32)[:, None], n_obs_steps, axis=1)


class ChunkExecutor:
    """Observation histories and re-planning for B environments stepped in lock-step.

    Args:
      act: (B, K, obs_dim) float32 raw observation histories -> (actions (B, H, D_a), valid (B,)).
      n_obs_steps: K.
      n_action_steps: actions executed from each chunk before the next call.
      action_dim: D_a (zero actions replace chunks that did not decode).
    """

    def __init__(self, act: Callable, n_obs_steps: int, n_action_steps: int, action_dim: int):
        self.act, self.k, self.n_action_steps, self.action_dim = act, n_obs_steps, n_action_steps, action_dim
        self.history = None
        self.chunk = None
        self.calls, self.call_seconds, self.invalid, self.decoded = 0, [], 0, 0

    def reset(self, obs: np.ndarray) -> None:
        """obs (B, obs_dim) first observations: the history repeats the first frame (as in training)."""
        self.history = first_history(obs, self.k)
        self.chunk = None

    def observe(self, obs: np.ndarray, mask: np.ndarray) -> None:
        """Appends obs (B, obs_dim) for the environments where mask (B,) is True."""
        rolled = np.concatenate([self.history[:, 1:], np.asarray(obs, np.float32)[:, None]], axis=1)
        self.history = np.where(mask[:, None, None], rolled, self.history)

    def action(self, t: int) -> np.ndarray:
        """Action (B, D_a) of time step t; calls the policy every n_action_steps steps."""
        i = t % self.n_action_steps
        if i == 0 or self.chunk is None:
            start = time.perf_counter()
            actions, valid = self.act(self.history)
            self.call_seconds.append(time.perf_counter() - start)
            self.calls += 1
            actions = np.where(valid[:, None, None], np.nan_to_num(np.asarray(actions, np.float32)), 0.0)
            self.invalid += int(np.sum(~valid))
            self.decoded += len(valid)
            self.chunk = actions
        return self.chunk[:, i]


def run_batched_episodes(envs: Sequence, act: Callable, n_obs_steps: int, n_action_steps: int,
                         max_steps: int) -> dict:
    """Runs one episode in each environment, all in lock-step with one batched policy call per re-plan.

    Args:
      envs: B environments with `reset() -> (obs, info)` and `step(a) -> (obs, reward, terminated, truncated,
        info)`, info["success"] truthy on success.
      act: see `ChunkExecutor`.
    Returns:
      {"success": (B,) bool, "steps": (B,) int, "calls": int, "call_seconds": [float], "invalid_rate": float}.
    """
    first = np.stack([np.asarray(env.reset()[0], np.float32) for env in envs])
    b = len(envs)
    action_dim = int(np.prod(envs[0].action_space.shape)) if hasattr(envs[0], "action_space") else None
    executor = ChunkExecutor(act, n_obs_steps, n_action_steps, action_dim)
    executor.reset(first)
    success, done = np.zeros(b, bool), np.zeros(b, bool)
    steps = np.zeros(b, np.int64)
    obs = first
    for t in range(max_steps):
        if done.all():
            break
        actions = executor.action(t)
        for i, env in enumerate(envs):
            if done[i]:
                continue
            o, _, terminated, truncated, info = env.step(np.clip(actions[i], -1.0, 1.0))
            obs[i] = o
            steps[i] += 1
            success[i] = bool(info.get("success", False))
            done[i] = success[i] or bool(terminated) or bool(truncated)
        executor.observe(obs, ~done)
    return {"success": success, "steps": steps, "calls": executor.calls, "call_seconds": executor.call_seconds,
            "invalid_rate": executor.invalid / max(executor.decoded, 1)}


# ----- Meta-World -----
def make_metaworld_envs(task: str, episodes: int, seed: int) -> list:
    """`episodes` environments of `task` on goals 0.. of MT1(task, seed=EVAL_BENCHMARK_SEED + seed) (goal e mod 50)."""
    import metaworld  # optional dependency: pip install -e .[metaworld]
    benchmark = metaworld.MT1(task, seed=EVAL_BENCHMARK_SEED + seed)
    envs = []
    for e in range(episodes):
        env = benchmark.train_classes[task]()
        env.set_task(benchmark.train_tasks[e % len(benchmark.train_tasks)])
        envs.append(env)
    return envs


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (std with ddof=1 / sqrt(n); 0 for a single value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def group_means(per_run: Sequence[float], num_policies: int) -> list[float]:
    """Per-run values ordered (policy, seed) -> one mean per policy (training seed) when there are several policies,
    else the per-run values (evaluation seeds): the units the standard error is taken over."""
    if num_policies <= 1:
        return list(per_run)
    return [float(v) for v in np.asarray(per_run, np.float64).reshape(num_policies, -1).mean(axis=1)]


def measure_latency(policy, obs: np.ndarray, num_tokens, repeats: int, seed: int = 0) -> float:
    """Median wall time (ms) of `policy.act` on obs (B, K, obs_dim) after one warm-up call."""
    import jax
    key = jax.random.PRNGKey(seed)
    policy.act({"state": obs}, key, num_tokens)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        policy.act({"state": obs}, jax.random.fold_in(key, i), num_tokens)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def evaluate(workdirs: Sequence[str], tasks: Sequence[str], episodes: int, seeds: Sequence[int],
             num_tokens: Sequence[int | None], max_steps: int, latency_repeats: int = 20, label: str = "",
             log: Callable[[str], None] = print, paired: bool = False) -> dict:
    """Closed-loop success per (k, task, run) and latency per k; see the module docstring. Returns the JSON dict.

    paired: workdir i runs on seeds[i] only (len(seeds) == len(workdirs)); otherwise every workdir on every seed.
    """
    import jax

    from oat_jax.policy.policy import load_policy

    if paired and len(seeds) != len(workdirs):
        raise ValueError(f"--paired needs one evaluation seed per workdir: {len(workdirs)} workdirs, seeds {seeds}.")
    start = time.perf_counter()
    policies = [load_policy(w) for w in workdirs]
    label = label or policies[0].tokenizer.name
    results: dict = {"label": label, "workdirs": list(workdirs), "tasks": list(tasks), "episodes": episodes,
                     "seeds": list(seeds), "paired": paired, "max_steps": max_steps, "by_k": {}}
    for k in num_tokens:
        key_k = str(k if k is not None else policies[0].config.max_tokens)
        per_task = {t: [] for t in tasks}
        call_ms, invalid, tokens_used = [], [], []
        sample_obs = None
        for w, policy in enumerate(policies):
            for seed in ([seeds[w]] if paired else seeds):
                for ti, task in enumerate(tasks):
                    envs = make_metaworld_envs(task, episodes, seed)
                    base = jax.random.fold_in(jax.random.PRNGKey(seed), 1000 * w + ti)
                    counter = [0]

                    def act(history, policy=policy, base=base, counter=counter):
                        counter[0] += 1
                        key = jax.random.fold_in(base, counter[0])
                        tokens, lengths = policy.sample_tokens({"state": history}, key, k)
                        tokens_used.append(float(np.mean(lengths)))
                        actions, valid = policy.tokenizer.detokenize(tokens, lengths)
                        return np.asarray(actions, np.float32), np.asarray(valid, bool)

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
                        f"{time.perf_counter() - start:.0f}s elapsed")
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
    results["wall_s"] = time.perf_counter() - start
    return results


def remeasure_latency(results: Sequence[dict], repeats: int, log: Callable[[str], None] = print) -> None:
    """Replace latency_ms_b1 / latency_ms_batch of every (policy, k) in `results` (in place) with fresh timings.

    Closed-loop latencies are taken while the environments run (and possibly beside other jobs); this re-times
    `policy.act` of each result's first workdir on one real observation of its first task, at batch 1 and at the
    evaluation batch (`episodes`), with the median of `repeats` calls after a warm-up call.
    """
    from oat_jax.policy.policy import load_policy
    for res in results:
        policy = load_policy(res["workdirs"][0])
        env = make_metaworld_envs(res["tasks"][0], 1, res["seeds"][0])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = first_history(env.reset()[0][None], policy.config.n_obs_steps)  # (1, K, obs_dim)
        batch = np.repeat(history, res["episodes"], axis=0)  # (episodes, K, obs_dim)
        for key_k, entry in res["by_k"].items():
            k = int(key_k)
            entry["latency_ms_b1"] = measure_latency(policy, history, k, repeats)
            entry["latency_ms_batch"] = measure_latency(policy, batch, k, repeats)
            log(f"{res['label']} k={k}: {entry['latency_ms_b1']:.2f} ms at batch 1, "
                f"{entry['latency_ms_batch']:.2f} ms at batch {res['episodes']}")


# ----- tables and plots -----
def table_rows(results: Sequence[dict]) -> list[dict]:
    """One row per (policy, k): name, per-task mean/se, mean/se, latencies, invalid rate, mean tokens."""
    rows = []
    for res in results:
        multi = len(res["by_k"]) > 1
        for k, e in res["by_k"].items():
            rows.append({"name": f"{res['label']}_{k}" if multi else res["label"], "k": int(k), **e,
                         "tasks": res["tasks"]})
    return rows


def markdown_table(results: Sequence[dict]) -> str:
    """Markdown table of success rates (%, mean ± s.e.) per task and overall, with latency per policy call."""
    rows = table_rows(results)
    tasks = rows[0]["tasks"] if rows else []
    head = ["policy"] + [t.replace("-v3", "") for t in tasks] + ["mean ± s.e.", "latency b=1 (ms)",
                                                                 "latency/call (ms)", "tokens", "invalid"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"]] + [f"{100 * r['per_task'][t]['mean']:.1f} ± {100 * r['per_task'][t]['se']:.1f}"
                               for t in tasks]
        cells += [f"**{100 * r['mean']:.1f} ± {100 * r['se']:.1f}**", f"{r['latency_ms_b1']:.1f}",
                  f"{r['latency_ms_batch']:.1f}", f"{r['mean_tokens']:.1f}", f"{100 * r['invalid_rate']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_success_vs_k(results: Sequence[dict], path: str) -> None:
    """Success (mean ± s.e.) against k for policies evaluated at several k; others as horizontal bands."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    swept = [r for r in results if len(r["by_k"]) > 1]
    ks_all = sorted({int(k) for r in (swept or results) for k in r["by_k"]})
    colors = plt.get_cmap("tab10").colors
    for i, res in enumerate(results):
        color = colors[i % len(colors)]
        ks = sorted(int(k) for k in res["by_k"])
        means = np.array([100 * res["by_k"][str(k)]["mean"] for k in ks])
        ses = np.array([100 * res["by_k"][str(k)]["se"] for k in ks])
        if len(ks) > 1:
            ax.errorbar(ks, means, yerr=ses, marker="o", capsize=3, color=color, label=res["label"])
        else:
            mean_tokens = res["by_k"][str(ks[0])].get("mean_tokens", ks[0])
            tokens = f"{ks[0]}" if round(mean_tokens) == ks[0] else f"≤ {ks[0]}, {mean_tokens:.0f} on average"
            ax.axhline(means[0], linestyle="--", color=color, label=f"{res['label']} ({tokens} tokens)")
            ax.axhspan(means[0] - ses[0], means[0] + ses[0], color=color, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.set_xlabel("tokens generated (k)")
    ax.set_ylabel("success rate (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: Sequence[dict], output: str, stem: str) -> None:
    """<output>/<stem>.json, <stem>.md and success_vs_k.png."""
    os.makedirs(output, exist_ok=True)
    payload = results[0] if len(results) == 1 and stem == "results" else list(results)
    with open(os.path.join(output, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(output, f"{stem}.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(results))
    plot_success_vs_k(results, os.path.join(output, "success_vs_k.png"))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _OUTPUT.value:
        raise app.UsageError("--output is required.")
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax / TFDS INFO lines would bury the per-task results
    if _MERGE.value:
        results = []
        for path in _MERGE.value.split(","):
            with open(path.strip(), encoding="utf-8") as f:
                loaded = json.load(f)
            results.extend(loaded if isinstance(loaded, list) else [loaded])
        if _REMEASURE.value:
            remeasure_latency(results, _LATENCY_REPEATS.value)
        write_outputs(results, _OUTPUT.value, "table")
        print(markdown_table(results))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (or --merge).")
    ks = _ints(_NUM_TOKENS.value) or [None]
    res = evaluate([w.strip() for w in _WORKDIR.value.split(",") if w.strip()],
                   [t.strip() for t in _TASKS.value.split(",") if t.strip()], _EPISODES.value, _ints(_SEEDS.value),
                   ks, _MAX_STEPS.value, _LATENCY_REPEATS.value, _LABEL.value, paired=_PAIRED.value)
    write_outputs([res], _OUTPUT.value, "results")
    print(markdown_table([res]))
    print(f"wall time {res['wall_s']:.0f} s")


if __name__ == "__main__":
    app.run(main)
