r"""Export the EMA tokenizer of a training checkpoint to `<workdir>/tokenizer` (loadable with `OATTokenizer.load`).

  python -m oat_jax.training.export --workdir=runs/oat_metaworld [--step=best|latest|<int>] [--output=DIR]

Training calls `save_tokenizer` at the end of a single-process run; a multi-process run exports from its final
checkpoint with this command in a single-process subprocess on process 0 (saving a tokenizer is a one-process job).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax

from oat_jax import checkpoint, pretrained
from oat_jax.normalizer import ActionNormalizer
from oat_jax.tokenizer import OATTokenizer

TOKENIZER_DIR = checkpoint.WORKDIR_SUBDIR  # <workdir>/tokenizer, found by OATTokenizer.load(<workdir>)
CHECKPOINT_DIR = pretrained.CHECKPOINTS_DIR  # <workdir>/checkpoints, the layout `oat_jax.pretrained` reads


def save_tokenizer(path: str, model_cfg, ema_params, normalizer: ActionNormalizer,
                   dataset_normalizers: dict[str, ActionNormalizer] | None = None) -> str:
    """Writes (and overwrites) a tokenizer directory from host params; returns its path."""
    return OATTokenizer(model_cfg, jax.device_get(ema_params), normalizer, dataset_normalizers).save(
        path, overwrite=True)


def export_from_checkpoint(workdir: str, step: str | int = "latest", output: str | None = None) -> str:
    """Writes the EMA tokenizer of checkpoint `step` ('latest', 'best' or an int) of a training workdir.

    Args:
      workdir: training run directory holding `checkpoints/`.
      output: tokenizer directory (default `<workdir>/tokenizer`, replaced if present).
    Returns:
      The tokenizer directory.
    """
    tok = pretrained.load_checkpoint(workdir, step)
    return tok.save(output or os.path.join(workdir, TOKENIZER_DIR), overwrite=True)


def export_in_subprocess(workdir: str, step: int) -> str:
    """Runs this module's command in a fresh single-process CPU interpreter (for multi-process runs)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    subprocess.run([sys.executable, "-m", "oat_jax.training.export", f"--workdir={workdir}", f"--step={step}"],
                   check=True, env=env)
    return os.path.join(workdir, TOKENIZER_DIR)


def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    import argparse
    parser = argparse.ArgumentParser(description="Export an OAT tokenizer from a training checkpoint.")
    parser.add_argument("--workdir", required=True, help="training run directory")
    parser.add_argument("--step", default="latest", help="'latest', 'best' or a step number")
    parser.add_argument("--output", default=None, help="tokenizer directory (default <workdir>/tokenizer)")
    args = parser.parse_args(argv)
    step = args.step if args.step in ("latest", "best") else int(args.step)
    print(export_from_checkpoint(args.workdir, step, args.output))


if __name__ == "__main__":
    main()
