r"""Policy training data at scale (docs/POLICY.md, "Streamed policy data"): peak memory of a training run at 1x and
2x the episodes of a generated camera dataset (in memory vs streamed), and the train-step rate of the in-memory and
the streamed feed on a dataset, measured side by side in one process.

  python -m experiments.recipes.policy_data_scale --output=runs/policy_scale --memory --episodes=75,150
  python -m experiments.recipes.policy_data_scale --output=runs/policy_scale --speed \
      --speed_data=runs/setB/data --tokenizer=runs/setB/tok_oat_s0

Writes <output>/policy_data_scale.json and prints Markdown tables.
"""

import json
import os

from absl import app, flags

from experiments.configs import policy as policy_configs
from oat_jax.benchmarks import policy_feed

flags.DEFINE_string("output", None, "Folder for the generated datasets, the runs and the results.", required=True)
flags.DEFINE_bool("memory", False, "Measure peak RSS against the number of episodes.")
flags.DEFINE_list("episodes", ["75", "150"], "Episodes of the generated datasets (1x, 2x, ...).")
flags.DEFINE_integer("steps", 72, "Steps per generated episode.")
flags.DEFINE_integer("image_size", 64, "Height = width of the generated JPEG camera.")
flags.DEFINE_integer("train_steps", 100, "Updates of each memory run.")
flags.DEFINE_integer("shuffle_buffer", 2000, "Pairs in the streamed runs' shuffle buffer.")
flags.DEFINE_list("feeds", ["streamed", "in memory"], "Feeds whose memory is measured.")
flags.DEFINE_bool("speed", False, "Measure the steps/s of both feeds side by side.")
flags.DEFINE_string("speed_data", "", "RLDS dataset of the speed comparison ('' = the embedded MT10 data).")
flags.DEFINE_string("tokenizer", "", "Tokenizer (a saved dir or an OAT workdir) of the speed comparison.")
flags.DEFINE_list("policy_flags", ["model.width=128", "model.depth=2", "model.state_hidden=128",
                                   "train.batch_size=64"],
                  "config overrides (field=value) of the speed comparison's policy (the comparison's small policy).")
flags.DEFINE_integer("windows", 6, "Timed windows per feed (after one untimed window each).")
flags.DEFINE_integer("window_steps", 40, "Steps per window.")
FLAGS = flags.FLAGS


def _speed_config():
    config = policy_configs.get_config("oat")
    config.tokenizer.path = FLAGS.tokenizer
    config.data.path = FLAGS.speed_data
    config.data.shuffle_buffer = FLAGS.shuffle_buffer
    for item in FLAGS.policy_flags:
        field, _, value = item.partition("=")
        section, name = field.split(".")
        config[section][name] = type(config[section][name])(value)
    return config


def main(argv):
    del argv
    os.makedirs(FLAGS.output, exist_ok=True)
    out_path = os.path.join(FLAGS.output, "policy_data_scale.json")
    results = json.load(open(out_path, encoding="utf-8")) if os.path.exists(out_path) else {}
    if FLAGS.memory:
        rows = policy_feed.memory_rows(FLAGS.output, [int(e) for e in FLAGS.episodes], FLAGS.steps,
                                       FLAGS.image_size, FLAGS.train_steps, FLAGS.shuffle_buffer, FLAGS.feeds)
        results["memory"] = rows
        print("| feed | episodes | pairs | peak RSS (MiB) | wall (s) |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['feed']} | {r['episodes']} | {r['pairs']} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.0f} |")
    if FLAGS.speed:
        if not FLAGS.tokenizer:
            raise app.UsageError("--speed needs --tokenizer (a saved tokenizer or an OAT training workdir).")
        rates = policy_feed.interleaved_rates(_speed_config(), FLAGS.windows, FLAGS.window_steps)
        results["speed"] = {**rates, "data": FLAGS.speed_data or "embedded MT10", "tokenizer": FLAGS.tokenizer,
                            "policy_flags": FLAGS.policy_flags}
        print("| window | in memory (steps/s) | streamed (steps/s) | ratio |\n|---|---|---|---|")
        for i, (a, b) in enumerate(zip(rates["in memory"], rates["streamed"])):
            print(f"| {i + 1} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    app.run(main)
