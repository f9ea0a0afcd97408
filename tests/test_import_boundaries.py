"""The tokenizer core (oat_jax outside oat_jax.training) never pulls in TensorFlow, data_pipelines or training."""

import pkgutil
import subprocess
import sys

import oat_jax

FORBIDDEN = ("tensorflow", "data_pipelines", "oat_jax.training")


def _core_modules():
    names = [m.name for m in pkgutil.walk_packages(oat_jax.__path__, "oat_jax.")
             if not m.name.startswith("oat_jax.training")]
    assert {"oat_jax.tokenizer", "oat_jax.checkpoint", "oat_jax.model", "oat_jax.fsq"} <= set(names)
    return names


def test_core_modules_do_not_import_tensorflow_data_pipelines_or_training():
    modules = ["oat_jax"] + _core_modules()
    code = (f"import importlib, sys\n"
            f"for name in {modules!r}:\n"
            f"    importlib.import_module(name)\n"
            f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {FORBIDDEN!r}))\n"
            f"print(bad)\n"
            f"sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"forbidden modules imported: {result.stdout}{result.stderr[-2000:]}"
