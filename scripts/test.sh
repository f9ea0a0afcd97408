#!/usr/bin/env bash
# Sets up .venv (if needed) with the package and its test extras, then runs the CI test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
python -m pytest -m "not slow" -q -n 2 "$@"
