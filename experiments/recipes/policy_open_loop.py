r"""Open-loop diagnostics of token policies on the held-out episodes of their dataset (oat_jax/eval/open_loop.py).

  python -m experiments.recipes.policy_open_loop --workdirs=runs/mw/policy_oat_s0,runs/mw/policy_quest_s0 \
      --data=runs/mw/data --output=runs/mw/open_loop

Per policy: the tokenizer's normalized MSE on the executed first steps and the whole chunk per prefix k, the
policy's when it samples every token (as in closed loop) or after 1 / 2 / 4 demonstration tokens, teacher-forced
accuracy and CE per position, the entropy of the demonstration tokens per position, and the median and 90th
percentile of the per-pair executed error (a few large misses vs a uniform small error). Writes open_loop.json and
open_loop.md in --output.
"""

import json
import os

from absl import app, flags

_WORKDIRS = flags.DEFINE_string("workdirs", None, "Comma-separated policy workdirs (or policy directories).")
_DATA = flags.DEFINE_string("data", None, "RLDS builder directory the policies were trained on.")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 1500, "Held-out (observation, chunk) pairs used (evenly spaced).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Sampling repeats averaged per setting.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for open_loop.json and open_loop.md.")


def _row(name: str, r: dict) -> str:
    n = len(r["entropy"])
    ks = sorted(int(k) for k in r["tokenizer"]["mse_exec"])
    pol = r["policy"]["mse_exec"]
    return (f"| {name} | {r['tokenizer']['mse_exec'][n]:.4f} | "
            + " / ".join(f"{pol[f'f0_k{k}']:.4f}" for k in ks) + " | "
            + " / ".join(f"{pol[f'f{f}_k{n}']:.4f}" for f in (1, 2, 4) if f"f{f}_k{n}" in pol) + " | "
            + f"{r['teacher_forced']['accuracy'][0]:.3f} / {r['teacher_forced']['ce'][0]:.2f} | "
            + f"{sum(r['teacher_forced']['accuracy']) / n:.3f} | {r['entropy'][0]:.2f} | "
            + " / ".join(f"{q:.4f}" for q in r["policy"]["exec_quantiles"][f"f0_k{n}"]) + " |")


def main(argv):
    del argv
    import numpy as np
    import ml_collections

    from oat_jax.eval.open_loop import open_loop_report
    from oat_jax.policy.policy import TokenPolicy
    from oat_jax.training.policy import data as policy_data

    results = {}
    for work in [w for w in _WORKDIRS.value.split(",") if w]:
        policy = TokenPolicy.load(work)
        data = ml_collections.ConfigDict(dict(path=_DATA.value, name="", data_dir="", source_split="train",
                                              val_fraction=0.1, split_seed=0, state_keys=("observation/state",),
                                              image_keys=(), language_key="", action_keys=""))
        pairs = policy_data.load_pairs(data, "val", policy.tokenizer.horizon, policy.config.n_obs_steps)
        idx = np.linspace(0, len(pairs["actions"]) - 1, min(_MAX_PAIRS.value, len(pairs["actions"]))).astype(int)
        results[os.path.basename(os.path.normpath(work))] = open_loop_report(
            policy, pairs["actions"][idx], {"state": pairs["state"][idx]}, repeats=_REPEATS.value)
        print(_row(os.path.basename(os.path.normpath(work)), results[os.path.basename(os.path.normpath(work))]),
              flush=True)
    os.makedirs(_OUTPUT.value, exist_ok=True)
    with open(os.path.join(_OUTPUT.value, "open_loop.json"), "w") as f:
        json.dump(results, f, indent=1)
    header = ("| policy | tokenizer exec MSE (k = N) | policy exec MSE, own tokens (k = 1 / 2 / 4 / ... / N) | "
              "policy exec MSE after 1 / 2 / 4 demo tokens (k = N) | first-token TF acc / CE | mean TF acc | "
              "entropy pos 0 | own tokens' per-pair exec MSE, median / 90th pct (k = N) |\n"
              "|---|---|---|---|---|---|---|---|\n")
    with open(os.path.join(_OUTPUT.value, "open_loop.md"), "w") as f:
        f.write(header + "\n".join(_row(name, r) for name, r in results.items()) + "\n")
    print(f"wrote {_OUTPUT.value}/open_loop.md")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdirs", "data", "output"])
    app.run(main)
