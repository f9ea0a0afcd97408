"""The light core install and the oldest versions it declares, really installed.

- `pip install .` resolves to no TensorFlow, TFDS, matplotlib, TensorBoard or training library (pip's resolver, dry
  run, the core's requirements as setup.py declares them).
- `pip install .` into a venv holding openpi's pins (jax 0.5.3, flax 0.10.2, orbax-checkpoint 0.11.13, numpy < 2) —
  the lower bounds setup.py declares — and nothing else: a tokenizer, a training checkpoint and a policy saved here
  with the newest versions load and give the same tokens; the first-layout fixture loads too; an export written by this jax says which jax it needs, and
  `reexport` makes one that runs there.

The pinned environment is a venv built once and cached in ~/.cache/oat_jax/pinned (OAT_PINNED_CACHE overrides), keyed
by the pins and setup.py's core requirements. Without network access and without a cached venv the tests skip and
say so; a resolver conflict fails.
"""

import ast
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest

import train_helpers
from oat_helpers import TINY, random_params, smooth_actions
from oat_jax import Normalizer, OATTokenizer, serialization

REPO = train_helpers.REPO
OPENPI_PINS = ("jax==0.5.3", "jaxlib==0.5.3", "flax==0.10.2", "orbax-checkpoint==0.11.13", "numpy>=1.22.4,<2",
               "ml-dtypes==0.4.1", "tensorstore==0.1.74", "flatbuffers>=24.3.25")
HEAVY = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "matplotlib", "tensorboardx", "apache-beam",
         "ml-collections", "h5py", "zarr", "pyarrow", "av", "metaworld", "torch")  # (flax itself requires optax)
NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                  "ConnectTimeout", "ReadTimeout", "Could not fetch URL", "ProxyError", "No route to host")


def _core_requirements() -> list[str]:
    """setup.py's CORE list (read without running setup.py)."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CORE" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no CORE list")


def _pip(python: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _skip_if_offline(result: subprocess.CompletedProcess, what: str) -> None:
    """Skips on a network failure; any other pip failure (e.g. ResolutionImpossible) fails the test."""
    log = result.stdout + result.stderr
    if result.returncode and any(marker in log for marker in NETWORK_ERRORS):
        pytest.skip(f"{what}: no package index reachable ({log.strip().splitlines()[-1][:200]})")
    assert result.returncode == 0, f"{what} failed:\n{log[-4000:]}"


def _source_copy(directory) -> str:
    """This checkout without tests, docs, runs and build products (what `pip install .` needs)."""
    target = os.path.join(directory, "src")
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "tests", "docs", "*.egg-info",
                                                                "__pycache__", "build", "tmp"))
    return target


@pytest.fixture(scope="module")
def pinned_python(tmp_path_factory):
    """The python of a cached venv holding openpi's pins and the core's other requirements, into which this checkout
    is then installed (`pip install --no-deps .`, a regular install: the checks import the installed package)."""
    requirements = _core_requirements()
    key = hashlib.sha256(json.dumps([OPENPI_PINS, requirements, sys.version_info[:2]]).encode()).hexdigest()[:16]
    root = os.environ.get("OAT_PINNED_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "oat_jax", "pinned"))
    os.makedirs(root, exist_ok=True)
    venv = os.path.join(root, f"openpi-{key}")
    python = os.path.join(venv, "bin", "python")
    with open(os.path.join(root, f"openpi-{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (xdist workers, parallel CI runs)
        if not os.path.exists(os.path.join(venv, ".complete")):
            shutil.rmtree(venv, ignore_errors=True)
            building = tempfile.mkdtemp(prefix=f"openpi-{key}-", dir=root)
            subprocess.run([sys.executable, "-m", "venv", building], check=True, timeout=300)
            constraints = os.path.join(building, "pins.txt")
            with open(constraints, "w") as f:
                f.write("\n".join(OPENPI_PINS) + "\n")
            result = _pip(os.path.join(building, "bin", "python"), "install", "-c", constraints,
                          *[p.split(">")[0].split("=")[0].split("<")[0] for p in OPENPI_PINS], *requirements)
            if result.returncode:
                shutil.rmtree(building, ignore_errors=True)
            _skip_if_offline(result, "building the venv with openpi's pins")
            # venvs hard-code their own path in scripts, not in the interpreter: renaming keeps `bin/python` working
            os.rename(building, venv)
            open(os.path.join(venv, ".complete"), "w").close()
        result = _pip(python, "install", "--no-deps", "--force-reinstall", "--quiet",
                      _source_copy(tmp_path_factory.mktemp("pinned_src")))
        _skip_if_offline(result, "installing this checkout into the pinned venv")
    return python


def _run_pinned(python: str, code: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=600, env=env,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_core_install_pulls_no_tensorflow_or_plotting(tmp_path):
    """pip's resolver, for `pip install <this checkout>` into an empty environment, picks none of the heavy
    packages (TensorFlow alone is 1.3 GB)."""
    source = pathlib.Path(_source_copy(tmp_path))  # a copy: building must not touch the checkout
    report = tmp_path / "report.json"
    result = _pip(sys.executable, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                  str(source))
    _skip_if_offline(result, "resolving `pip install .`")
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    names = {n.replace("_", "-") for n in names}
    assert {"oat-jax", "jax", "flax", "orbax-checkpoint", "numpy"} <= names, sorted(names)
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    # building the wheel leaves the source tree as it was, and the wheel holds no top-level `experiments` package
    result = _pip(sys.executable, "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "wheels"), str(source))
    _skip_if_offline(result, "building the wheel")
    assert not [p for p in os.listdir(source) if p == "build" or p.endswith(".egg-info")], os.listdir(source)
    wheel = next((tmp_path / "wheels").glob("oat_jax-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {"oat_jax", "data_pipelines"} <= tops and "experiments" not in tops, tops


PINNED_CHECK = """
import importlib.util, json, os, sys
import numpy as np, jax, flax, orbax.checkpoint as ocp
import oat_jax
from oat_jax import OATTokenizer, load_pretrained
from oat_jax.policy import load_policy
paths = json.loads(sys.argv[1])
data = np.load(paths["expected"])
out = {"versions": [jax.__version__, flax.__version__, ocp.__version__ if hasattr(ocp, "__version__") else ""],
       "installed": oat_jax.__file__.startswith(sys.prefix),
       "heavy": [m for m in ("tensorflow", "tensorflow_datasets", "matplotlib") if importlib.util.find_spec(m)]}
tok = OATTokenizer.load(paths["tokenizer"])
tokens, _ = tok.tokenize(data["actions"])
out["tokens_equal"] = bool((tokens == data["tokens"]).all())
decoded, valid = tok.detokenize(data["tokens"], data["lengths"])
out["decode_err"] = float(np.abs(decoded - data["decoded"]).max()) if valid.all() else None
pre = load_pretrained(paths["tokenizer"])
jitted = jax.jit(lambda p, a: pre.detokenize_fn(p, pre.tokenize_fn(p, a)[:, :2]))(pre.params, data["actions"])
out["jit_err"] = float(np.abs(np.asarray(jitted) - data["decoded2"]).max())
for step in ("best", "latest"):
    ckpt = OATTokenizer.load(paths["workdir"], step=step)
    out[f"ckpt_{step}_equal"] = bool((ckpt.tokenize(data["run_actions"])[0] == data[f"run_tokens_{step}"]).all())
legacy = OATTokenizer.load(paths["legacy"] + "/tokenizer")
legacy_expected = np.load(paths["legacy"] + "/expected.npz")
out["legacy_equal"] = bool((legacy.tokenize(legacy_expected["actions"])[0]
                            == legacy_expected["tokenizer_tokens"]).all())
policy = load_policy(paths["legacy"] + "/policy_run")
actions, valid = policy.act({"state": legacy_expected["policy_obs"]}, jax.random.PRNGKey(7))
out["policy_ok"] = bool(valid.all() and np.isfinite(actions).all())
from oat_jax import serialization
try:
    serialization.ExportedTokenizer(paths["export"])
    out["export_error"] = ""
except RuntimeError as e:
    out["export_error"] = str(e)
serialization.reexport(paths["export"], paths["reexport"])
again = serialization.ExportedTokenizer(paths["reexport"])
out["reexport_equal"] = bool((np.asarray(again.tokenize(data["actions"][:4])) == data["tokens"][:4]).all())
print("RESULT" + json.dumps(out))
"""


def _trained_workdir(directory: str) -> str:
    from oat_jax.training.tokenizer import trainer as tokenizer_trainer

    data = train_helpers.write_tiny_dataset(os.path.join(directory, "data"))
    workdir = os.path.join(directory, "run")
    tokenizer_trainer.train_and_evaluate(train_helpers.tiny_config(data), workdir)
    return workdir


def test_artifacts_saved_with_the_newest_versions_load_under_openpi_pins(pinned_python, tmp_path):
    tok = OATTokenizer(TINY, random_params(TINY, seed=3),
                       Normalizer.fit(smooth_actions(32, TINY.horizon, TINY.action_dim, seed=1) * 2.0 - 0.5))
    tok.save(str(tmp_path / "tok"))
    actions = smooth_actions(4, TINY.horizon, TINY.action_dim, seed=2) * 2.0 - 0.5
    tokens, _ = tok.tokenize(actions)
    lengths = np.array([1, 3, 5, 8], np.int32)
    decoded, _ = tok.detokenize(tokens, lengths)
    decoded2, _ = tok.detokenize(tokens[:, :2])
    serialization.export_tokenizer(tok, str(tmp_path / "export"), batch_sizes=(4,))
    workdir = _trained_workdir(str(tmp_path))
    run = {f"run_tokens_{step}": OATTokenizer.load(workdir, step=step) for step in ("best", "latest")}
    run_actions = np.random.default_rng(0).uniform(-1, 1, (5,) + (run["run_tokens_best"].horizon,
                                                                  run["run_tokens_best"].action_dim))
    run = {k: v.tokenize(run_actions.astype(np.float32))[0] for k, v in run.items()}
    np.savez(tmp_path / "expected.npz", actions=actions, tokens=tokens, lengths=lengths, decoded=decoded,
             decoded2=decoded2, run_actions=run_actions.astype(np.float32), **run)
    paths = {"expected": str(tmp_path / "expected.npz"), "tokenizer": str(tmp_path / "tok"), "workdir": workdir,
             "legacy": os.path.join(REPO, "tests", "fixtures", "legacy_v1"), "export": str(tmp_path / "export"),
             "reexport": str(tmp_path / "reexport")}
    stdout = _run_pinned(pinned_python, PINNED_CHECK, json.dumps(paths))
    out = json.loads(stdout.split("RESULT", 1)[1])
    assert out["versions"][:2] == ["0.5.3", "0.10.2"], out
    assert out["installed"] and out["heavy"] == [], out  # the regular install, in a venv without TensorFlow
    assert out["tokens_equal"] and out["legacy_equal"] and out["policy_ok"], out
    assert out["ckpt_best_equal"] and out["ckpt_latest_equal"], out
    assert out["decode_err"] is not None and out["decode_err"] < 1e-4 and out["jit_err"] < 1e-4, out
    needed = serialization.required_jax(__import__("jax").__version__)
    if needed:  # this jax writes artifacts that jax 0.5.3 cannot read: the loader must say which jax it needs
        assert f"jax >= {needed}" in out["export_error"] and "reexport" in out["export_error"], out
    else:
        assert out["export_error"] == "", out
    assert out["reexport_equal"], out
