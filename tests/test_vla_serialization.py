"""jax.export artifacts of tokenize/detokenize: reloaded in a fresh process with jax + numpy only, they give the
library's results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from oat_helpers import TINY, random_params, smooth_actions
from oat_jax import Normalizer, OATTokenizer
from oat_jax import serialization

# Runs in a fresh interpreter: loads oat_jax/serialization.py as a standalone file (not the oat_jax package) and
# checks that neither flax nor any other oat_jax module was imported.
FRESH = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("standalone_serialization", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
exported = module.ExportedTokenizer(sys.argv[2])
data = np.load(sys.argv[3])
out = {"detok": np.asarray(exported.detokenize(data["tokens"], data["lengths"])),
       "tok": np.asarray(exported.tokenize(data["actions"]))}
np.savez(sys.argv[4], **out)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "oat_jax", "orbax", "tensorflow"))
assert not leaked, leaked
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    normalizer = Normalizer.fit(smooth_actions(16, TINY.horizon, TINY.action_dim, seed=7) * 3.0 - 1.0)
    tok = OATTokenizer(TINY, random_params(TINY, seed=4), normalizer)
    directory = serialization.export_tokenizer(tok, str(tmp_path_factory.mktemp("export") / "art"),
                                               batch_sizes=(4, 1))
    return tok, directory


def test_artifacts_reloaded_in_a_fresh_process_match_the_library(exported, tmp_path):
    tok, directory = exported
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, tok.vocab_size, (4, TINY.num_tokens)).astype(np.int32)
    lengths = np.array([1, 3, 5, 8], np.int32)
    actions = smooth_actions(4, TINY.horizon, TINY.action_dim, seed=9) * 3.0 - 1.0
    np.savez(tmp_path / "inputs.npz", tokens=tokens, lengths=lengths, actions=actions)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", FRESH, serialization.__file__, directory,
                             str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
                            capture_output=True, text=True, env=dict(env, JAX_PLATFORMS="cpu"), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    expected, valid = tok.detokenize(tokens, lengths)
    assert valid.all()
    np.testing.assert_allclose(out["detok"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["tok"], tok.tokenize(actions)[0])
    assert np.abs(out["detok"][0] - out["detok"][3]).max() > 1e-3  # different tokens/prefixes decode differently


def test_manifest_and_batch_size_checks(exported):
    tok, directory = exported
    with open(os.path.join(directory, serialization.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    assert manifest["batch_sizes"] == [1, 4] and manifest["num_tokens"] == TINY.num_tokens
    assert manifest["config"] == TINY.to_dict()
    loaded = serialization.ExportedTokenizer(directory)
    one = loaded.detokenize(np.array([[7] * TINY.num_tokens]), 2)
    np.testing.assert_allclose(one, tok.detokenize(np.array([[7, 7]]))[0], atol=1e-5)
    with pytest.raises(ValueError, match="batch sizes \\[1, 4\\]"):
        loaded.detokenize(np.zeros((3, TINY.num_tokens), np.int32))
    np.testing.assert_allclose(loaded.detokenize(np.full((1, 2), 7, np.int32)), one, atol=1e-5)  # a 2-token prefix
    with pytest.raises(ValueError, match="shape \\(B, k\\)"):
        loaded.detokenize(np.zeros((2,), np.int32))
    with pytest.raises(FileExistsError):
        serialization.export_tokenizer(tok, directory)
