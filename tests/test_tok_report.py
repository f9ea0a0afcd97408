"""The QueST-style config trains with the ordinary loop, and the evaluation CLI runs end to end on a tiny dataset."""

import json
import os

import numpy as np
import pytest

from experiments import evaluate_tokenizers
from oat_jax.action_tokenizers import OATActionTokenizer, load_action_tokenizer
from oat_jax.training import train_and_evaluate
import train_helpers
from train_helpers import compilation_cache, tiny_dataset  # noqa: F401  (pytest fixtures)
from test_tok_oat import random_params

pytestmark = pytest.mark.usefixtures("compilation_cache")


@pytest.fixture(scope="module")
def quest_workdir(tiny_dataset, tmp_path_factory):
    """A QueST-style run of 1 step with the tiny 'test' config (H=8, N=4, 3-D actions)."""
    workdir = str(tmp_path_factory.mktemp("quest_run"))
    config = train_helpers.tiny_config(tiny_dataset, "test,quest", **{"train.num_steps": 1, "train.eval_every": 1})
    assert (config.model.encoder, config.model.nested_dropout) == ("conv", "none")
    metrics = train_and_evaluate(config, workdir)
    assert np.isfinite(metrics["val_mse"])
    return workdir


def test_quest_config_trains_and_loads_as_an_action_tokenizer(quest_workdir):
    tok = load_action_tokenizer(quest_workdir)
    assert isinstance(tok, OATActionTokenizer)
    assert (tok.config.encoder, tok.config.nested_dropout, tok.config.causal_decoder) == ("conv", "none", True)
    assert "conv_0" in tok.tokenizer.params["encoder"]
    x = np.random.default_rng(0).normal(size=(3, tok.horizon, tok.action_dim)).astype(np.float32)
    recon, valid = tok.detokenize(*tok.tokenize(x))
    assert valid.all() and recon.shape == x.shape


def test_evaluation_cli_end_to_end(quest_workdir, tiny_dataset, tmp_path):
    # A second OAT-family tokenizer: random params in the registers architecture of the same run.
    trained = load_action_tokenizer(quest_workdir).tokenizer
    config = trained.config.replace(encoder="registers", nested_dropout="pow2")
    oat_dir = OATActionTokenizer(type(trained)(config, random_params(config), trained.normalizer)).save(
        str(tmp_path / "oat"))
    out = str(tmp_path / "report")
    report = evaluate_tokenizers.main([f"--dataset={tiny_dataset}", f"--oat={oat_dir}", f"--quest={quest_workdir}",
                                       f"--out={out}", "--max_chunks=20", "--num_random=4", "--fast_vocab=300",
                                       f"--unseen=other={tiny_dataset}"])
    for name in ("report.md", "report.json", "rate_distortion.png", "decodability.png", "token_entropy.png",
                 "tokenizers/bin/action_tokenizer.json", "tokenizers/fast/bpe.json"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "report.json")) as f:
        saved = json.load(f)
    assert set(saved["tokenizers"]) == {"oat", "quest", "bin", "fast"} and saved["meta"]["num_val_chunks"] == 20
    r = report["tokenizers"]
    h, d = report["meta"]["horizon"], report["meta"]["action_dim"]
    assert r["bin"]["tokens_per_chunk"] == {"mean": h * d, "max": h * d, "min": h * d}
    assert r["oat"]["tokens_per_chunk"]["max"] == 4 and [p["tokens"] for p in r["quest"]["prefix"]] == [1, 2, 3, 4]
    for key in ("oat", "quest", "bin"):
        dec = r[key]["decodability"]
        assert dec["random"] == dec["replace_one"] == dec["truncate"] == 1.0, key
    assert r["fast"]["decodability"]["random"] < 1.0 and r["fast"]["decodability"]["truncate"] == 0.0
    assert r["fast"]["valid_fraction"] == 1.0 and r["fast"]["mse_norm"] < 0.01
    assert len(r["bin"]["decodability"]["random_by_length"]) == h * d
    checks = {c["check"]: c["passed"] for c in report["checks"]}
    for check in ("Bin 100% decodable in all three tests", "OAT 100% decodable in all three tests",
                  "FAST below 100% decodable on random sequences", "Bin = H * D_a tokens per chunk",
                  "Bin error within a bin width of the analytic bound",
                  "FAST round-trips real chunks within its quantization error"):
        assert checks[check], check
    text = open(os.path.join(out, "report.md")).read()
    assert "## Acceptance checks" in text and "## Unseen data 'other' (20 chunks" in text
    # --unseen: every tokenizer measured on every episode of the extra dataset, prefixes where they decode
    assert saved["meta"]["unseen"] == {"other": {"num_chunks": 20}}
    assert [p["tokens"] for p in r["quest"]["unseen"]["other"]["prefix"]] == [1, 2, 3, 4]
    assert r["quest"]["unseen"]["other"]["prefix"][-1]["mse_norm"] == pytest.approx(
        r["quest"]["unseen"]["other"]["mse_norm"])
    assert r["bin"]["unseen"]["other"]["mse_norm"] < 1e-3 and r["fast"]["unseen"]["other"]["prefix"] == []
    assert any(c.startswith("OAT on unseen data 'other'") for c in checks)
    with pytest.raises(SystemExit, match="experiments.train"):
        evaluate_tokenizers.main([f"--dataset={tiny_dataset}", f"--oatx={tmp_path / 'missing'}", f"--out={out}"])
