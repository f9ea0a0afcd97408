"""The tokenizer report: per-tokenizer report methods, per-position statistics, the measurement library and its
acceptance-check table, and the evaluation CLI end to end on a tiny dataset (with a QueST-style run of the ordinary
training loop)."""

import json
import os

import numpy as np
import pytest
from absl import flags

from experiments import evaluate_tokenizers
from oat_jax import OATTokenizer
from oat_jax.action_tokenizers import BinActionTokenizer, FASTActionTokenizer, load_action_tokenizer, metrics
from oat_jax.eval import tokenizer_report, tokenizer_report_render
from oat_jax.normalizer import Normalizer
from oat_jax.training import train_and_evaluate
from oat_jax.training.policy import data as policy_data
import train_helpers
from test_tok_oat import TINY, random_oat, random_params

compilation_cache = train_helpers.compilation_cache  # pytest fixtures, found by name
tiny_dataset = train_helpers.tiny_dataset

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _chunks(n, horizon, dim, seed=0):
    """Raw chunks (n, H, D_a) float32, smooth in time, each dimension in its own range."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    wave = rng.uniform(0.2, 1.0, (n, 1, dim)) * np.sin(2 * np.pi * rng.uniform(0.2, 1.2, (n, 1, dim)) * t
                                                        + rng.uniform(0, 6.3, (n, 1, dim)))
    return (wave * np.arange(1, dim + 1) + np.arange(dim)).astype(np.float32)


# ----- per-tokenizer report methods -----
@pytest.mark.parametrize("horizon, dim, expected", [(8, 3, [3, 6, 12, 24]), (5, 2, [2, 4, 8, 10]), (1, 4, [4]),
                                                    (16, 1, [1, 2, 4, 8, 16])])
def test_bin_report_prefix_lengths_are_whole_steps_doubling_to_h(horizon, dim, expected):
    tok = BinActionTokenizer.fit(_chunks(16, horizon, dim))
    assert tok.report_prefix_lengths() == expected
    assert tok.report_prefix_lengths()[-1] == tok.max_tokens


def test_bin_diagnostics_measure_the_error_against_the_analytic_bound():
    train = _chunks(400, 8, 3)
    tok = BinActionTokenizer.fit(train, num_bins=64)
    recon, valid = tok.detokenize(*tok.tokenize(train))
    bound = tok.diagnostics(train, recon, valid)["bin_bound"]
    assert set(tok.diagnostics(train, recon, valid)) == {"bin_bound"}
    w = 2 / 64
    assert (bound["bin_width"], bound["half_width"], bound["uniform_mse"]) == pytest.approx((w, w / 2, w * w / 12))
    assert 0.3 * w / 2 < bound["max_abs_error_in_range"] <= w / 2 + 1e-6
    assert bound["mse_norm_own"] == pytest.approx(w * w / 12, rel=0.3)
    assert bound["fraction_out_of_range"] == 0.0 and 0 < bound["fraction_at_range_limits"] < 0.01
    # values outside the fitted range are counted, and their (clipped) error shows in the MSE
    wide = train * 2.0
    recon, valid = tok.detokenize(*tok.tokenize(wide))
    wide_bound = tok.diagnostics(wide, recon, valid)["bin_bound"]
    assert wide_bound["fraction_out_of_range"] > 0.2 and wide_bound["mse_norm_own"] > 100 * bound["mse_norm_own"]
    assert wide_bound["max_abs_error_in_range"] <= w / 2 + 1e-6


def test_fast_report_methods_no_prefixes_and_the_quantization_section():
    train = _chunks(300, 8, 2)
    tok = FASTActionTokenizer.fit(train, scale=10.0, vocab_size=200, max_tokens=8)
    assert tok.report_prefix_lengths() == []
    recon, valid = tok.detokenize(*tok.tokenize(train))
    diag = tok.diagnostics(train, recon, valid)
    assert set(diag) == {"fast_quantization"}
    q = diag["fast_quantization"]
    assert set(q) == {"scale", "mse_bound_per_chunk", "mse_uniform_rounding", "max_chunk_mse_norm_own",
                      "mean_mse_norm_own", "chunks_clean", "chunks_with_clipped_coefficients", "chunks_truncated",
                      "clean_chunks_decoded"}
    lengths = tok.token_lengths(train)
    assert q["chunks_truncated"] == int(np.sum(lengths > 8)) > 0  # max_tokens=8 cuts the longest chunks
    assert q["chunks_with_clipped_coefficients"] == 0 and q["chunks_clean"] == int(np.sum(lengths <= 8))
    assert q["clean_chunks_decoded"] == 1.0 and 0 < q["max_chunk_mse_norm_own"] <= q["mse_bound_per_chunk"]
    assert q["mean_mse_norm_own"] <= q["max_chunk_mse_norm_own"] and q["mse_bound_per_chunk"] == pytest.approx(0.0025)
    # a clean chunk reported invalid, or decoded badly, shows in the section
    clean = np.flatnonzero(lengths <= 8)
    bad_valid = valid.copy()
    bad_valid[clean[0]] = False
    assert tok.diagnostics(train, recon, bad_valid)["fast_quantization"]["clean_chunks_decoded"] < 1.0
    shifted = recon.copy()
    shifted[clean[1]] += 1.0
    assert tok.diagnostics(train, shifted, valid)["fast_quantization"]["max_chunk_mse_norm_own"] > 0.01


def test_oat_report_methods_every_prefix_and_the_config():
    tok = random_oat()
    assert tok.report_prefix_lengths() == [1, 2, 3, 4]
    x = np.zeros((2, TINY.horizon, TINY.action_dim), np.float32)
    assert tok.diagnostics(x, x, np.ones(2, bool)) == {"config": TINY.to_dict()}
    json.dumps(tok.diagnostics(x, x, np.ones(2, bool)))


# ----- per-position token statistics: one implementation -----
def test_position_counts_and_entropy_bits():
    tokens = np.array([[0, 1, -1], [0, 2, -1], [1, 3, 7], [2, -1, -1]])
    lengths = np.array([2, 2, 3, 1])  # row 2 has an out-of-range id (7 >= vocab 4) at position 2
    counts = metrics.position_counts(tokens, lengths, 4)
    np.testing.assert_array_equal(counts, [[2, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    bits = metrics.entropy_bits(counts)
    assert bits[0] == pytest.approx(1.5) and bits[1] == pytest.approx(np.log2(3)) and np.isnan(bits[2])
    assert metrics.entropy_bits(np.array([0.0, 5.0, 0.0])) == 0.0
    assert metrics.entropy_bits(np.full((2, 8), 0.25)) == pytest.approx([3.0, 3.0])
    stats = metrics.token_statistics(tokens, lengths, 4)
    assert stats["entropy_bits"][:2] == pytest.approx([1.5, np.log2(3)]) and np.isnan(stats["entropy_bits"][2])
    assert stats["count"] == [4, 3, 0] and stats["usage"] == [0.75, 0.75, 0.0] and stats["usage_total"] == 1.0
    assert stats["mean_entropy_bits"] == pytest.approx((1.5 + np.log2(3)) / 2) and stats["max_entropy_bits"] == 2.0
    # the policy statistics are the same entropies in nats (positions nobody reaches left out)
    policy = policy_data.token_statistics(tokens, lengths, 4)
    assert policy["entropy_pos0"] == pytest.approx(1.5 * np.log(2)) and "entropy_pos2" not in policy
    assert policy["entropy_pos1"] == pytest.approx(np.log(3)) and policy["distinct_ids"] == 4.0


# ----- the measurement library and the acceptance-check table -----
class _Plain:
    """A tokenizer with the Protocol only (no report methods): delegates to a Bin tokenizer."""

    name = "plain"

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, attr):
        if attr in ("report_prefix_lengths", "diagnostics"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)


def test_evaluate_tokenizer_uses_the_report_methods_and_works_without_them():
    train = _chunks(200, 4, 2)
    val = _chunks(30, 4, 2, seed=1)
    common = Normalizer.fit(train, "limits")
    tok = BinActionTokenizer.fit(train, num_bins=32)
    results = tokenizer_report.evaluate_all({"bin": tok, "plain": _Plain(tok)}, val, common, {"again": val},
                                            np.random.default_rng(0), num_random=3)
    r, plain = results["bin"], results["plain"]
    assert r["label"] == "Bin" and plain["label"] == "plain" and r["type"] == "bin"
    assert [p["tokens"] for p in r["prefix"]] == [2, 4, 8] and plain["prefix"] == []
    assert "bin_bound" in r and "bin_bound" not in plain
    assert r["prefix"][-1]["mse_norm"] == pytest.approx(r["mse_norm"])
    assert r["prefix"][0]["mse_norm"] > r["prefix"][-1]["mse_norm"]
    assert r["unseen"]["again"]["mse_norm"] == pytest.approx(r["mse_norm"])
    assert r["decodability"]["random"] == r["decodability"]["replace_one"] == 1.0
    assert len(r["decodability"]["random_by_length"]) == 8 and r["token_stats"]["count"] == [30] * 8


def test_evenly_spaced_keeps_first_and_last_and_every_row_when_under_the_limit():
    from oat_jax.eval.subsets import evenly_spaced

    assert evenly_spaced(np.arange(10), 3).tolist() == [0, 4, 9]
    assert evenly_spaced(np.arange(10), 0).tolist() == evenly_spaced(np.arange(10), 10).tolist() == list(range(10))
    assert evenly_spaced(np.zeros((7, 2, 3)), 4).shape == (4, 2, 3)


def _results(oat_curve, oatx_curve=None, unseen_curves=None):
    """Minimal `evaluate_all` results for the acceptance checks of OAT (and OAT x)."""
    def entry(curve, unseen=None):
        n = len(curve)
        return {"prefix": [{"tokens": k + 1, "mse_norm": v} for k, v in enumerate(curve)], "max_tokens": n,
                "tokens_per_chunk": {"mean": n, "max": n, "min": n},
                "decodability": {"random": 1.0, "replace_one": 1.0, "truncate": 1.0},
                "unseen": {label: {"prefix": [{"mse_norm": v} for v in c]} for label, c in (unseen or {}).items()}}
    results = {"oat": entry(oat_curve, unseen_curves)}
    if oatx_curve is not None:
        results["oatx"] = entry(oatx_curve)
    return results


def test_acceptance_checks_are_a_table_with_thresholds():
    names = [c.name for c in tokenizer_report.ACCEPTANCE_CHECKS]
    assert len(names) == len(set(names)) and all(c.needs for c in tokenizer_report.ACCEPTANCE_CHECKS)
    rise = next(c for c in tokenizer_report.ACCEPTANCE_CHECKS if c.name.startswith("OAT MSE does not rise"))
    assert rise.thresholds == {"max_rise_percent": 2.0}
    checks = lambda results: {c["check"]: c["passed"] for c in tokenizer_report.acceptance_checks(results, 8, 3)}
    # OAT alone: no OAT x, Bin or FAST checks; the rise threshold is in the title and is applied
    ok = checks(_results([0.1, 0.05, 0.0505, 0.01]))  # k=3 is 1% above k=2
    assert set(ok) == {"OAT 100% decodable in all three tests", "OAT = N tokens per chunk",
                       "OAT MSE does not rise over k = 1..N (each k at most 2% above k - 1)"} and all(ok.values())
    assert not checks(_results([0.1, 0.05, 0.052, 0.01]))[
        "OAT MSE does not rise over k = 1..N (each k at most 2% above k - 1)"]  # 4% above
    # with OAT x: the two ratio checks, each against its own threshold
    both = checks(_results([0.04, 0.01], [0.3, 0.009]))
    assert both["OAT k = N within 1.25x of OAT x (same budget)"]
    assert both["OAT k = 1 at most 0.2x OAT x's k = 1 (ordering kept)"]
    worse = checks(_results([0.07, 0.012], [0.3, 0.009]))
    assert not worse["OAT k = N within 1.25x of OAT x (same budget)"]
    assert not worse["OAT k = 1 at most 0.2x OAT x's k = 1 (ordering kept)"]
    # one check per unseen dataset
    unseen = checks(_results([0.1, 0.01], unseen_curves={"a": [0.1, 0.05], "b": [0.1, 0.06]}))
    assert unseen["OAT on unseen data 'a': k = N MSE below 0.055 and no rise over k"]
    assert not unseen["OAT on unseen data 'b': k = N MSE below 0.055 and no rise over k"]
    # a custom table
    custom = (tokenizer_report.AcceptanceCheck("k = 1 below {limit:g}", ("oat",),
                                               lambda c: (c.results["oat"]["prefix"][0]["mse_norm"] <
                                                          c.thresholds["limit"], "detail"), {"limit": 0.5}),)
    assert tokenizer_report.acceptance_checks(_results([0.1]), 8, 3, custom) == [
        {"check": "k = 1 below 0.5", "passed": True, "detail": "detail"}]
    assert tokenizer_report.acceptance_checks({}, 8, 3) == []


@pytest.fixture(scope="module")
def quest_workdir(tiny_dataset, tmp_path_factory):
    """A QueST-style run of 1 step with the tiny 'test' config (H=8, N=4, 3-D actions)."""
    workdir = str(tmp_path_factory.mktemp("quest_run"))
    config = train_helpers.tiny_config(tiny_dataset, "test,quest", **{"train.num_steps": 1, "train.eval_every": 1})
    assert (config.model.encoder, config.objective.nested_dropout) == ("conv", "none")
    metrics = train_and_evaluate(config, workdir)
    assert np.isfinite(metrics["val_mse"])
    return workdir


def test_quest_config_trains_and_loads_as_an_action_tokenizer(quest_workdir):
    tok = load_action_tokenizer(quest_workdir)
    assert isinstance(tok, OATTokenizer)
    assert (tok.config.encoder, tok.config.causal_decoder) == ("conv", True)
    assert "conv_0" in tok.params["encoder"]
    x = np.random.default_rng(0).normal(size=(3, tok.horizon, tok.action_dim)).astype(np.float32)
    recon, valid = tok.detokenize(*tok.tokenize(x))
    assert valid.all() and recon.shape == x.shape


def test_evaluation_cli_end_to_end(quest_workdir, tiny_dataset, tmp_path):
    # A second OAT-family tokenizer: random params in the registers architecture of the same run.
    trained = load_action_tokenizer(quest_workdir)
    config = trained.config.replace(encoder="registers")
    oat_dir = type(trained)(config, random_params(config), trained.normalizer).save(
        str(tmp_path / "oat"))
    out = str(tmp_path / "report")
    report = evaluate_tokenizers.main(["evaluate_tokenizers", f"--dataset={tiny_dataset}", f"--oat={oat_dir}",
                                       f"--quest={quest_workdir}", f"--out={out}", "--max_chunks=20",
                                       "--num_random=4", "--fast_vocab=300", f"--unseen=other={tiny_dataset}"])
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
    # each tokenizer's own report methods: prefix lengths and its section of report.json
    assert [p["tokens"] for p in r["bin"]["prefix"]] == [3, 6, 12, 24] and r["fast"]["prefix"] == []
    assert saved["tokenizers"]["quest"]["config"]["encoder"] == "conv" and r["oat"]["config"]["encoder"] == "registers"
    assert {k for k in ("config", "bin_bound", "fast_quantization") if k in saved["tokenizers"]["bin"]} == {"bin_bound"}
    assert saved["tokenizers"]["fast"]["fast_quantization"]["chunks_clean"] == 20
    checks = {c["check"]: c["passed"] for c in report["checks"]}
    for check in ("Bin 100% decodable in all three tests", "OAT 100% decodable in all three tests",
                  "FAST below 100% decodable on random sequences", "Bin = H * D_a tokens per chunk",
                  "Bin error within a bin width of the analytic bound",
                  "FAST round-trips real chunks within its quantization error"):
        assert checks[check], check
    text = open(os.path.join(out, "report.md")).read()
    assert "## Acceptance checks" in text and "## Unseen data 'other' (20 chunks" in text
    assert "\n## Bin\n" in text and "\n## FAST\n" in text and "(OAT family)" in text
    assert text == tokenizer_report_render.markdown(report)
    # --unseen: every tokenizer measured on every episode of the extra dataset, prefixes where they decode
    assert saved["meta"]["unseen"] == {"other": {"num_chunks": 20}}
    assert [p["tokens"] for p in r["quest"]["unseen"]["other"]["prefix"]] == [1, 2, 3, 4]
    assert r["quest"]["unseen"]["other"]["prefix"][-1]["mse_norm"] == pytest.approx(
        r["quest"]["unseen"]["other"]["mse_norm"])
    assert r["bin"]["unseen"]["other"]["mse_norm"] < 1e-3 and r["fast"]["unseen"]["other"]["prefix"] == []
    assert any(c.startswith("OAT on unseen data 'other'") for c in checks)
    # every call parses into fresh flag values: --oat and --quest of the call above are not loaded again
    hint = r"error: --oatx=.*experiments\.train --config=experiments/configs/oat\.py:oatx"
    with pytest.raises(SystemExit, match=hint):
        evaluate_tokenizers.main(["evaluate_tokenizers", f"--dataset={tiny_dataset}",
                                  f"--oatx={tmp_path / 'missing'}", f"--out={out}"])
    with pytest.raises(flags.IllegalFlagValueError, match="out"):
        evaluate_tokenizers.main(["evaluate_tokenizers", f"--dataset={tiny_dataset}"])
