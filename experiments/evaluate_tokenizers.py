r"""Tokenizer evaluation report: OAT, OAT x, QueST-style, Bin and FAST on held-out episodes of an RLDS dataset.

  python -m experiments.evaluate_tokenizers --oat=runs/oat --oatx=runs/oatx --quest=runs/quest --out=report_dir
      [--dataset=RLDS_BUILDER_DIR] [--unseen=auto|label=DIR,...] [--max_chunks=4096] [--num_random=64] [--seed=0]

--oat / --oatx / --quest: training workdirs of experiments.train (configs oat.py, oat.py:oatx, oat.py:quest) or
tokenizer dirs; any may be left out. Bin and FAST are fitted on the train split of the same episode split
(--val_fraction, --split_seed: keep the training run's values) and saved under <out>/tokenizers/. Everything is
measured on the validation episodes (at most --max_chunks, evenly spaced) and on every episode of each --unseen
dataset ('auto': the embedded unseen Meta-World tasks, made with `python -m data_pipelines.metaworld
--tasks=heldout`, when --dataset is the embedded MT10 data). Writes <out>/report.md, report.json and plots.
This file loads the data; measurements and checks: `oat_jax.eval.tokenizer_report`; rendering: `..._render`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (through the data pipeline)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from data_pipelines import EMBEDDED_DATASET_DIR  # noqa: E402

from oat_jax.action_tokenizers.registry import load_action_tokenizer  # noqa: E402
from oat_jax.eval import tokenizer_report as tr  # noqa: E402
from oat_jax.eval import tokenizer_report_render as render  # noqa: E402
from oat_jax.normalizer import Normalizer  # noqa: E402


def define_flags(fv: flags.FlagValues) -> None:
    """Defines the flags on `fv` (flags.FLAGS when run as a program, fresh values in `main(argv)`)."""
    flags.DEFINE_string("dataset", EMBEDDED_DATASET_DIR, "RLDS builder directory (default: embedded)", flag_values=fv)
    flags.DEFINE_string("unseen", "auto", "comma-separated unseen datasets ('label=DIR', 'DIR' or an embedded name); "
                        "'auto' = the embedded unseen Meta-World tasks with the embedded --dataset", flag_values=fv)
    for key, label in tr.LEARNED:
        flags.DEFINE_string(key, "", f"{label} training workdir or tokenizer dir", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory of the report (required)", flag_values=fv)
    flags.DEFINE_integer("horizon", 32, "H when no learned tokenizer is given", flag_values=fv)
    flags.DEFINE_float("val_fraction", 0.1, "episode split (as in training)", flag_values=fv)
    flags.DEFINE_integer("split_seed", 0, "episode split seed (as in training)", flag_values=fv)
    flags.DEFINE_integer("max_chunks", 4096, "held-out chunks evaluated (evenly spaced; 0 = all)", flag_values=fv)
    flags.DEFINE_integer("num_random", 64, "random sequences per length in test (a)", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the decodability probes", flag_values=fv)
    flags.DEFINE_integer("bin_bins", 256, "Bin: bins per dimension", flag_values=fv)
    flags.DEFINE_float("fast_scale", 10.0, "FAST: DCT coefficient scale", flag_values=fv)
    flags.DEFINE_integer("fast_vocab", 1024, "FAST: BPE vocabulary size", flag_values=fv)
    flags.DEFINE_integer("fast_max_tokens", 128, "FAST: longest token sequence", flag_values=fv)
    flags.DEFINE_string("fast_normalizer", "limits", "FAST: 'limits' (as OAT, Bin) or 'quantile'", flag_values=fv)
    flags.DEFINE_string("skip", "", "comma-separated baselines not to fit: bin, fast", flag_values=fv)
    flags.mark_flag_as_required("out", flag_values=fv)


def load_data(fv: flags.FlagValues, horizon: int):
    """-> (train chunks (M, H, D_a), val chunks (V, H, D_a) float32 raw, train statistics dict, {unseen label:
    (U, H, D_a) chunks of every episode}); --unseen=auto means the embedded unseen tasks with the embedded data."""
    from data_pipelines import loader
    from oat_jax.training import data

    embedded = os.path.abspath(fv.dataset) == os.path.abspath(EMBEDDED_DATASET_DIR)
    unseen = ("metaworld_heldout" if embedded else "") if fv.unseen == "auto" else fv.unseen
    cfg = ml_collections.ConfigDict(dict(val_fraction=fv.val_fraction, split_seed=fv.split_seed,
                                         eval_datasets=unseen))
    spec = loader.DatasetSpec(path=fv.dataset)
    return (data.load_chunks(spec, cfg, "train", horizon), data.eval_chunks(spec, cfg, horizon, fv.max_chunks),
            data.train_statistics(spec, cfg), data.extra_eval_chunks(cfg, horizon, "--unseen", fv.max_chunks))


def _load_learned(key: str, path: str):
    """The tokenizer at `path` (a workdir or a tokenizer dir); the error says how to train it."""
    try:
        return load_action_tokenizer(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--{key}={path}: {e} Train it with python -m experiments.train --config=experiments/"
                                f"configs/oat.py{'' if key == 'oat' else ':' + key} --workdir={path}") from e


def run(fv: flags.FlagValues, command: str = "") -> dict:
    """Loads, fits and evaluates every tokenizer; writes the report into --out; returns the report dict."""
    start = time.perf_counter()
    learned = {key: _load_learned(key, fv[key].value) for key, _ in tr.LEARNED if fv[key].value}
    horizon, learned_dim = tr.learned_shape(learned) or (fv.horizon, None)
    train, val, stats, unseen = load_data(fv, horizon)
    action_dim = tr.check_action_dims(val, fv.dataset, learned_dim, unseen)
    common = Normalizer.from_stats(stats["action"], "limits")
    os.makedirs(fv.out, exist_ok=True)
    options = {"bin": dict(num_bins=fv.bin_bins),
               "fast": dict(scale=fv.fast_scale, vocab_size=fv.fast_vocab, max_tokens=fv.fast_max_tokens,
                            normalizer_mode=fv.fast_normalizer)}
    skip = {s.strip() for s in fv.skip.split(",")}
    baselines, fit_s = tr.fit_baselines(train, {name: o for name, o in options.items() if name not in skip})
    for name, tok in baselines.items():
        tok.save(os.path.join(fv.out, "tokenizers", name))
    results = tr.evaluate_all({**learned, **baselines}, val, common, unseen, np.random.default_rng(fv.seed),
                              fv.num_random, extra={name: {"fit_s": seconds} for name, seconds in fit_s.items()})
    report = {"meta": {"dataset": tr.display_path(fv.dataset), "num_val_chunks": int(len(val)),
                       "num_train_chunks": int(len(train)), "horizon": int(horizon), "action_dim": int(action_dim),
                       "val_fraction": fv.val_fraction, "split_seed": fv.split_seed, "seed": fv.seed,
                       "unseen": {label: {"num_chunks": int(len(c))} for label, c in unseen.items()},
                       "workdirs": {key: fv[key].value for key in learned},
                       "normalizer_is_identity": tr.normalizer_is_identity(common), "command": command},
              "tokenizers": results, "checks": tr.acceptance_checks(results, horizon, action_dim)}
    report["plots"] = render.write_plots(results, fv.out)
    report["meta"]["wall_s"] = time.perf_counter() - start
    render.write_report(report, fv.out)
    return report


def main(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> dict:
    """Runs the report, prints the checks, returns the report dict; SystemExit("error: ...") on a missing tokenizer
    or mismatched data. `flag_values`: flags parsed by `app.run`; None parses `argv` (program name, then flags as on
    the command line) into fresh flag values, so tests can call main(["evaluate_tokenizers", "--out=..."]) again."""
    command = "python -m experiments.evaluate_tokenizers " + " ".join((argv if flag_values is None else sys.argv)[1:])
    if flag_values is None:
        flag_values = flags.FlagValues()
        define_flags(flag_values)
        argv = flag_values(list(argv))
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        report = run(flag_values, command)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for c in report["checks"]:
        print(f"[{'PASS' if c['passed'] else 'FAIL'}] {c['check']}: {c['detail']}")
    print(f"Report written to {os.path.join(flag_values.out, 'report.md')}")
    return report


def _program(argv: Sequence[str]) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # no Orbax / TFDS INFO lines; the report's progress lines only
    logging.getLogger("oat_jax.eval").setLevel(logging.INFO)
    main(argv, flags.FLAGS)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(_program)
