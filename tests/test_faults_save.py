"""Fault injection, saves: `kill -9` at every stage of `save(overwrite=True)` leaves the old or the new tokenizer
loadable; concurrent saves leave one consistent artifact; overwrite never deletes a directory it did not write."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from oat_jax import OATTokenizer
from oat_jax.config import OATConfig
from oat_jax.normalizer import Normalizer

CONFIG = OATConfig(action_dim=2, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=16, enc_depth=1, enc_heads=2,
                   dec_width=16, dec_depth=1, dec_heads=2, dec_ffn_dim=32)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child process: saves tokenizer `seed` to `path` (overwrite=True), dying with SIGKILL at `point`.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import jax, numpy as np
    from oat_jax import OATTokenizer, artifacts, atomic_dir
    sys.path.insert(0, {tests!r})
    from test_faults_save import CONFIG, normalizer
    path, seed, point, repeats = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    def after(obj, name, fn=None):
        original = getattr(obj, name)
        def wrapped(*a, **k):
            out = original(*a, **k)
            die()
        setattr(obj, name, wrapped)
    if point == "params_written":
        after(artifacts, "save_params")
    elif point == "synced":
        after(atomic_dir, "_fsync_tree")
    elif point == "exchanged":
        after(atomic_dir, "_exchange")
    elif point.startswith("fallback_rename_"):
        atomic_dir._exchange = lambda a, b: False
        calls, target, rename = [0], int(point.rsplit("_", 1)[1]), os.rename
        def counted(a, b):
            rename(a, b)
            calls[0] += 1
            if calls[0] == target:
                die()
        atomic_dir.os.rename = counted
    tok = OATTokenizer.init(CONFIG, jax.random.PRNGKey(seed), normalizer(seed))
    for _ in range(repeats):
        try:
            tok.save(path, overwrite=point != "no_overwrite")
        except FileExistsError as e:
            print("LOSER", e)
""").format(tests=os.path.dirname(os.path.abspath(__file__)))


def normalizer(seed):
    """A normalizer that tells savers apart: its range is [-1 - seed, 1 + seed] in every dimension."""
    return Normalizer.from_stats({"action": {"min": [-1.0 - seed] * 2, "max": [1.0 + seed] * 2}}, "limits")


def _which(path):
    """Seed of the saved tokenizer at `path` (params and normalizer must agree on it)."""
    tok = OATTokenizer.load(path)
    seeds = [s for s in (1, 2) if np.allclose(np.asarray(tok.normalizer.to_dict()["scale"]),
                                              np.asarray(normalizer(s).to_dict()["scale"]))]
    assert len(seeds) == 1, "normalizer of neither saver"
    expected = OATTokenizer.init(CONFIG, jax.random.PRNGKey(seeds[0]))
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), tok.params, expected.params)
    assert all(jax.tree.leaves(same)), "params of one saver, normalizer of the other"
    return seeds[0]


def _child(path, seed, point, repeats=1):
    # The same XLA flags as this process (conftest's optimization level changes the normal initializer's bits).
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-c", CHILD, path, str(seed), point, str(repeats)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("point", ["params_written", "synced", "exchanged", "fallback_rename_1",
                                   "fallback_rename_2", "fallback_rename_3"])
def test_kill_during_overwrite_leaves_the_old_or_the_new_tokenizer(tmp_path, point):
    path = str(tmp_path / "tok")
    OATTokenizer.init(CONFIG, jax.random.PRNGKey(1), normalizer(1)).save(path)
    proc = _child(path, 2, point)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert _which(path) in (1, 2)
    if point in ("exchanged", "fallback_rename_3"):  # the new directory was in place when the process died
        assert _which(path) == 2
    # the next save cleans what the dead writer left beside the target
    OATTokenizer.init(CONFIG, jax.random.PRNGKey(1), normalizer(1)).save(path, overwrite=True)
    assert _which(path) == 1 and sorted(os.listdir(tmp_path)) == ["tok"]


def test_concurrent_overwrites_leave_one_consistent_tokenizer(tmp_path):
    path = str(tmp_path / "tok")
    procs = [_child(path, seed, "none", repeats=4) for seed in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    assert _which(path) in (1, 2) and sorted(os.listdir(tmp_path)) == ["tok"]


def test_concurrent_first_saves_one_wins_the_other_gets_a_clear_error(tmp_path):
    path = str(tmp_path / "tok")
    procs = [_child(path, seed, "no_overwrite") for seed in (1, 2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    losers = [o for o in outs if "LOSER" in o]
    assert len(losers) <= 1 and all(path in o for o in losers)
    assert _which(path) in (1, 2) and sorted(os.listdir(tmp_path)) == ["tok"]


def test_overwrite_refuses_a_directory_it_did_not_write(tmp_path):
    other = tmp_path / "results"
    other.mkdir()
    (other / "table.csv").write_text("keep me")
    tok = OATTokenizer.init(CONFIG, jax.random.PRNGKey(1), normalizer(1))
    with pytest.raises(FileExistsError, match="is not a saved tokenizer"):
        tok.save(str(other), overwrite=True)
    assert os.listdir(other) == ["table.csv"]
    with pytest.raises(FileExistsError, match="is a file"):
        tok.save(str(other / "table.csv"), overwrite=True)
