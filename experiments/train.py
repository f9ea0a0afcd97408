r"""Trains an OAT tokenizer, or (configs with `kind = "policy"`, experiments/configs/policy.py) a token policy.

  python -m experiments.train --config=experiments/configs/oat.py --workdir=runs/oat_metaworld
  python -m experiments.train --config=experiments/configs/oat.py:oatx --workdir=runs/oatx --config.optim.lr=1e-4

Re-running the same command resumes from the latest complete checkpoint in --workdir. The trained tokenizer is
written to <workdir>/tokenizer and loads with `oat_jax.OATTokenizer.load(<workdir>)`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (through the data pipeline)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (see experiments/configs/oat.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, plots and the final tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from oat_jax.training import train_and_evaluate  # after flag parsing: heavy imports (TensorFlow, JAX)
    from oat_jax.training.progress import quiet_library_logs
    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    from oat_jax.training.faults import disk_full, is_setup_error
    try:
        if _CONFIG.value.get("kind", "tokenizer") == "policy":
            from oat_jax.training.policy_trainer import train_policy
            train_policy(_CONFIG.value, _WORKDIR.value)
            return
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Exception as e:  # noqa: BLE001  (a full disk or a config error gets one clear line; others a traceback)
        if is_setup_error(e):
            logging.debug("Traceback of the error below:", exc_info=True)
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {message}\n(the run did not start; add --verbosity=1 for the traceback)", file=sys.stderr)
            sys.exit(2)
        if not disk_full(e):
            raise
        logging.error("Training stopped: no space left on the disk of --workdir=%s (%s). Checkpoints are written "
                      "to a temporary directory and renamed when complete, so the newest complete one is intact: "
                      "free disk space and run the same command to resume.", _WORKDIR.value, e)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
