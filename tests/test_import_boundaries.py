"""The tokenizer core (oat_jax outside oat_jax.training) never pulls in TensorFlow, data_pipelines or training."""

import pkgutil
import subprocess
import sys

import oat_jax

FORBIDDEN = ("tensorflow", "data_pipelines", "oat_jax.training")
# benchmark phases that time the training step and the data pipeline: they run in their own processes
TRAINING_BENCHMARKS = ("oat_jax.benchmarks.train_phase", "oat_jax.benchmarks.data_phase",
                       "oat_jax.benchmarks.policy_feed")


def _core_modules():
    names = [m.name for m in pkgutil.walk_packages(oat_jax.__path__, "oat_jax.")
             if not m.name.startswith("oat_jax.training") and m.name not in TRAINING_BENCHMARKS]
    assert {"oat_jax.tokenizer", "oat_jax.artifacts", "oat_jax.model", "oat_jax.fsq"} <= set(names)
    # the evaluation and benchmark libraries and the timing helper are core modules too (walked, imported and
    # checked), all but the train and data benchmark phases
    assert {"oat_jax.timing", "oat_jax.eval.rollouts", "oat_jax.eval.policy_eval", "oat_jax.eval.policy_report",
            "oat_jax.eval.policy_curves", "oat_jax.benchmarks.phases", "oat_jax.benchmarks.tokenizer_phase",
            "oat_jax.benchmarks.runner", "oat_jax.benchmarks.report", "oat_jax.benchmarks.machine"} <= set(names)
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


def test_action_tokenizers_import_the_bpe_library_only_when_fast_is_used():
    """Importing oat_jax.action_tokenizers (every submodule) pulls in neither `tokenizers` nor TensorFlow; fitting
    FAST does import `tokenizers`."""
    names = ["oat_jax", "oat_jax.action_tokenizers"] + [
        m for m in _core_modules() if m.startswith("oat_jax.action_tokenizers.")]
    assert "oat_jax.action_tokenizers.fast" in names
    code = (f"import importlib, sys\n"
            f"import numpy as np\n"
            f"for name in {names!r}:\n"
            f"    importlib.import_module(name)\n"
            f"heavy = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('tokenizers', 'tensorflow'))\n"
            f"before = heavy()\n"
            f"from oat_jax.action_tokenizers import fit_action_tokenizer\n"
            f"x = np.sin(np.linspace(0, 3, 8 * 2 * 64)).reshape(64, 8, 2)\n"
            f"fit_action_tokenizer('fast', x, vocab_size=200)\n"
            f"print(before, 'tokenizers' in sys.modules)\n"
            f"sys.exit(1 if before or 'tokenizers' not in sys.modules else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"heavy modules imported: {result.stdout}{result.stderr[-2000:]}"


def test_library_never_imports_experiments_and_data_pipelines_never_import_oat_jax():
    """Data flows one way: no module of oat_jax or data_pipelines imports `experiments` (scripts and configs), and
    no module of data_pipelines imports oat_jax (statistics travel as JSON), not even inside a function."""
    import ast
    import pathlib

    import data_pipelines

    offenders = []
    for package in (oat_jax, data_pipelines):
        for path in pathlib.Path(package.__path__[0]).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                banned = ("experiments",) + (("oat_jax",) if package is data_pipelines else ())
                offenders += [f"{path}:{node.lineno} imports {n}" for n in names
                              if any(n == b or n.startswith(b + ".") for b in banned)]
    assert not offenders, "\n".join(offenders)
