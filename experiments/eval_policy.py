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
The library behind it: oat_jax/eval/ (rollouts, policy_eval, policy_report).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from oat_jax.eval import policy_eval, policy_report  # noqa: E402
from oat_jax.eval.rollouts import PAPER_TASKS  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Policy workdir(s) or policy dir(s), comma-separated.")
_LABEL = flags.DEFINE_string("label", "", "Name of the policy in tables (default: the tokenizer name).")
_TASKS = flags.DEFINE_string("tasks", ",".join(PAPER_TASKS), "Comma-separated Meta-World v3 tasks.")
_EPISODES = flags.DEFINE_integer("episodes", 50, "Episodes (parallel environments) per task and seed.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated evaluation seeds (goals and sampling keys).")
_NUM_TOKENS = flags.DEFINE_string("num_tokens", "", "Comma-separated k for anytime decoding ('' = all tokens).")
_PAIRED = flags.DEFINE_bool("paired", False,
                            "Evaluate the i-th --workdir on the i-th --seeds entry only (training seed i on evaluation "
                            "seed i) instead of every workdir on every seed; needs as many seeds as workdirs.")
_CAMERA = flags.DEFINE_string("camera", "", "Meta-World camera rendered for policies trained on images (e.g. "
                               "'corner', the camera of `python -m data_pipelines.metaworld --camera=corner`).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature of token policies (0 = greedy); unset: "
                                   "each policy's saved setting (the paper's 1.0).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the top-k ids (0 = all); unset: each policy's saved "
                              "setting (the paper's 10).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 500, "Step limit of an episode (Meta-World's 500).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for results.json / results.md / success_vs_k.png.")
_MERGE = flags.DEFINE_string("merge", "", "Comma-separated results.json files to merge into one table.")
_LATENCY_REPEATS = flags.DEFINE_integer("latency_repeats", 20, "Timed policy calls at batch 1 per k.")
_REMEASURE = flags.DEFINE_bool("remeasure_latency", False,
                               "With --merge: time every policy again (batch 1 and the evaluation batch) before "
                               "writing the table, e.g. once no evaluation runs beside it any more.")


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _OUTPUT.value:
        raise app.UsageError("--output is required.")
    logging.set_verbosity(logging.WARNING)  # Orbax / TFDS INFO lines would bury the per-task results
    if _MERGE.value:
        results = policy_report.load_results(_items(_MERGE.value))
        if _REMEASURE.value:
            policy_eval.remeasure_latency(results, _LATENCY_REPEATS.value)
        policy_report.write_outputs(results, _OUTPUT.value, "table")
        print(policy_report.markdown_table(results))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (or --merge).")
    ks = [int(k) for k in _items(_NUM_TOKENS.value)] or [None]
    res = policy_eval.evaluate(_items(_WORKDIR.value), _items(_TASKS.value), _EPISODES.value,
                               [int(s) for s in _items(_SEEDS.value)], ks, _MAX_STEPS.value, _LATENCY_REPEATS.value,
                               _LABEL.value, paired=_PAIRED.value, camera=_CAMERA.value,
                               temperature=_TEMPERATURE.value, top_k=_TOP_K.value)
    policy_report.write_outputs([res], _OUTPUT.value, "results")
    print(policy_report.markdown_table([res]))
    print(f"wall time {res['wall_s']:.0f} s")


if __name__ == "__main__":
    app.run(main)
