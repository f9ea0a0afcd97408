# Sourced by scripts/*.sh: creates .venv on first use and installs oat_jax with the extras the quick start
# and the tests need. Re-running is cheap: the install is skipped until setup.py changes.
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[oat_jax] creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
if [ ! -f .venv/.oat_installed ] || [ setup.py -nt .venv/.oat_installed ]; then
  echo "[oat_jax] installing oat_jax and its dependencies into .venv (first run: about a minute)"
  if ! { python -m pip install --upgrade pip && python -m pip install -e ".[test]"; } \
      > .venv/pip.log 2>&1; then
    tail -n 40 .venv/pip.log
    echo "[oat_jax] pip install failed; full log in .venv/pip.log" >&2
    exit 1
  fi
  touch .venv/.oat_installed
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
