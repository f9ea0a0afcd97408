r"""Training curves and target statistics of the policies of one comparison run (evidence next to the success table).

  python -m experiments.recipes.policy_curves --runs=runs/metaworld_policy --output=runs/metaworld_policy/eval/table

Reads every `<runs>/policy_<type>_s<seed>/` (metrics.jsonl, final_metrics.json and the exported policy/policy.json
written by the policy trainer) and writes, in --output:
  policy_curves.png  held-out token cross-entropy, held-out token accuracy and first-token accuracy against the
                     training step, one line per token type (mean over training seeds, shaded min..max),
  policy_training.md one row per token type: tokens per chunk, final held-out token CE, the same summed over the
                     chunk (nats per chunk = CE x (mean length, +1 for EOS)), accuracies, distinct target ids and
                     the entropy of the first target token, each as the mean over seeds.
Per-token CE is not comparable across token types (vocabularies and lengths differ); nats per chunk is the
negative log-likelihood of a whole held-out chunk, which is. The library behind it: oat_jax/eval/policy_curves.py.
"""

from __future__ import annotations

import os

from absl import app, flags

from oat_jax.eval import policy_curves

_RUNS = flags.DEFINE_string("runs", None, "RUNS directory of metaworld_policy_comparison.sh.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for policy_curves.png and policy_training.md.")
flags.mark_flags_as_required(["runs", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    by_type = policy_curves.load_runs(_RUNS.value)
    os.makedirs(_OUTPUT.value, exist_ok=True)
    policy_curves.plot_curves(by_type, os.path.join(_OUTPUT.value, "policy_curves.png"))
    text = policy_curves.markdown(policy_curves.summary_rows(by_type))
    with open(os.path.join(_OUTPUT.value, "policy_training.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
