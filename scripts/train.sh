#!/usr/bin/env bash
# Sets up .venv (if needed) and trains the default OAT tokenizer on the embedded Meta-World dataset.
# Extra arguments are passed to experiments.train (e.g. --config.train.num_steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
WORKDIR="${WORKDIR:-runs/oat_metaworld}"
python -m experiments.train --config=experiments/configs/oat.py --workdir="$WORKDIR" "$@"
