r"""Write the tokenizer directory of a training checkpoint (the EMA params), e.g. after a multi-process run.

  python -m oat_jax.training.tokenizer.export --workdir=runs/oat_metaworld [--step=best|latest|<int>] [--output=DIR]

A checkpoint step is itself a loadable tokenizer (`OATTokenizer.load(workdir, step=...)`); this command writes it
as a standalone directory (default `<workdir>/tokenizer`, replaced if present). A single-process run writes its
final tokenizer directly; a multi-process run runs this command in a single-process subprocess on process 0.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags

from oat_jax import artifacts
from oat_jax.tokenizer import OATTokenizer


def write_from_checkpoint(workdir: str, step: str | int = "latest", output: str | None = None) -> str:
    """Writes the EMA tokenizer of checkpoint `step` ('latest', 'best' or an int) of `workdir`; returns its path."""
    tok = OATTokenizer.load(workdir, step)
    return tok.save(output or os.path.join(workdir, artifacts.WORKDIR_TOKENIZER), overwrite=True)


def write_in_subprocess(workdir: str, step: int) -> str:
    """Runs this module's command in a fresh single-process CPU interpreter (for multi-process runs)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    subprocess.run([sys.executable, "-m", "oat_jax.training.tokenizer.export", f"--workdir={workdir}",
                    f"--step={step}"], check=True, env=env)
    return os.path.join(workdir, artifacts.WORKDIR_TOKENIZER)


def main(argv) -> None:
    """Command-line entry point (see the module docstring); flags are defined only when run as a program."""
    del argv
    f = flags.FLAGS
    step = f.step if f.step in ("latest", "best") else int(f.step)
    print(write_from_checkpoint(f.workdir, step, f.output))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "training run directory", required=True)
    flags.DEFINE_string("step", "latest", "'latest', 'best' or a step number")
    flags.DEFINE_string("output", None, "tokenizer directory (default <workdir>/tokenizer)")
    app.run(main)
