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
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "'host:port' of process 0 of a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes of the run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index (with --coordinator_address).")
_AUTO = flags.DEFINE_boolean("distributed_auto", False, "Let JAX detect the cluster's processes (TPU pod, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def trainer(config):
    """The trainer module of `config`: config.kind 'tokenizer' (default) or 'policy' (config.policy.type 'token' or
    'diffusion'); each has `train_and_evaluate(config, workdir)`."""
    kind = config.get("kind", "tokenizer")
    if kind == "tokenizer":
        from oat_jax.training.tokenizer import trainer as tokenizer_trainer
        return tokenizer_trainer
    policy_type = config.policy.get("type", "token") if kind == "policy" else None
    if policy_type == "token":
        from oat_jax.training.policy import trainer as policy_trainer
        return policy_trainer
    if policy_type == "diffusion":
        from oat_jax.training.policy import diffusion_trainer
        return diffusion_trainer
    from oat_jax.training.faults import mark_setup_error
    raise mark_setup_error(ValueError(f"config.kind={kind!r} with config.policy.type={policy_type!r}: choose kind "
                                      f"'tokenizer', or 'policy' with policy.type 'token' or 'diffusion'."))


def with_setup_errors(fn, *args):
    """fn(*args), a ValueError marked as a setup error (one line on the command line)."""
    from oat_jax.training.faults import mark_setup_error
    try:
        return fn(*args)
    except ValueError as e:
        raise mark_setup_error(e)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from oat_jax.training.progress import quiet_library_logs  # after flag parsing: JAX and TensorFlow load later
    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    from oat_jax.training.faults import disk_full, is_setup_error
    try:
        from oat_jax.training.sharding import maybe_initialize_distributed  # before any JAX op
        with_setup_errors(maybe_initialize_distributed, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                          _AUTO.value)
        trainer(_CONFIG.value).train_and_evaluate(_CONFIG.value, _WORKDIR.value)
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
    from oat_jax.training.run_config import removed_field_errors
    removed = removed_field_errors(sys.argv[1:])  # before flag parsing, which would only say 'no such key'
    for line in removed:
        print(f"error: {line}", file=sys.stderr)
    if removed:
        sys.exit(2)
    app.run(main)
