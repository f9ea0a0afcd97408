#!/usr/bin/env bash
# The accelerator check in one command (no network): the benchmark a GPU/TPU run must know (matmul peak, tokenizer
# latency and throughput per k, train steps with their share of the matmul peak, the host feed and what bounds
# training), then the oat.py:scale recipe trained for a few minutes; writes <out>/report.md and report.json.
# About 8 minutes on one GPU; on a CPU it runs at tiny sizes in a minute or two (what CI runs).
#   bash scripts/accelerator_check.sh [OUT_DIR] [--minutes=3]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
OUT="${1:-accelerator_check}"
shift || true
python -m experiments.accelerator_check --out="$OUT" "$@"
