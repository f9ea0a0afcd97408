"""Tokenizer evaluation report: measurements of any `ActionTokenizer` on raw numpy chunks, and acceptance checks.

Data loading is not here (it needs TensorFlow; see `experiments/evaluate_tokenizers.py`): every function takes raw
action chunks (B, H, D_a) float. Every tokenizer is measured the same way, through the `ActionTokenizer` interface
and the report convention of `oat_jax.action_tokenizers.protocol` (`report_prefix_lengths`: where the
rate-distortion curve is measured; `diagnostics`: the tokenizer's own report section), so nothing branches on the
tokenizer's type. "Normalized" numbers are in one shared space given by `common` (an `Normalizer`, the
train split's 'limits' in the CLI), so they compare across tokenizers.

    results = evaluate_all({"oat": oat, "bin": bin_tok}, val_chunks, common, {"unseen": other_chunks},
                           np.random.default_rng(0), num_random=64)
    checks = acceptance_checks(results, horizon, action_dim)   # [{"check", "passed", "detail"}]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Mapping

import numpy as np

from oat_jax.action_tokenizers import metrics
from oat_jax.action_tokenizers.registry import fit_action_tokenizer
from oat_jax.normalizer import Normalizer

LEARNED = (("oat", "OAT"), ("oatx", "OAT x"), ("quest", "QueST"))  # key -> label of the OAT-family tokenizers
LABELS = dict(LEARNED, bin="Bin", fast="FAST")  # key -> label of every tokenizer of the report
DECODE_BLOCK = 4096  # rows per detokenize call in the probes
_LOG = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------------------
def detokenize_blocks(tok, tokens: np.ndarray, lengths: np.ndarray,
                      block: int = DECODE_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """`tok.detokenize` in blocks of `block` rows: tokens (B, W) int, lengths (B,) int -> actions (B, H, D_a)
    float32 raw (NaN where invalid), valid (B,) bool."""
    parts = [tok.detokenize(tokens[i:i + block], lengths[i:i + block]) for i in range(0, len(tokens), block)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def report_prefix_lengths(tok) -> list[int]:
    """`tok.report_prefix_lengths()` (the token counts of its rate-distortion curve), [] when it has none."""
    method = getattr(tok, "report_prefix_lengths", None)
    return [int(k) for k in method()] if method is not None else []


def tokenizer_diagnostics(tok, chunks: np.ndarray, reconstruction: np.ndarray, valid: np.ndarray) -> dict:
    """`tok.diagnostics(chunks (B, H, D_a), reconstruction (B, H, D_a) float32, valid (B,) bool)`: the tokenizer's
    own report section, {} when it has none."""
    method = getattr(tok, "diagnostics", None)
    return dict(method(chunks, reconstruction, valid)) if method is not None else {}


def decodability(tok, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, num_random: int) -> dict:
    """Fractions of (a) uniformly random sequences of every length 1..max_tokens, (b) real sequences with one token
    replaced, (c) real sequences truncated at a random position, that decode to finite chunks of shape (H, D_a).

    Args:
      tok: an ActionTokenizer; tokens (B, max_tokens) int, lengths (B,) int: `tok.tokenize` of real chunks.
      rng: draws the probes; num_random: random sequences per length in (a).
    Returns:
      {"random": mean of (a) over lengths, "random_by_length": {length: fraction}, "replace_one", "truncate" (None
       when no sequence has 2 tokens or more), "num_random_per_length", "num_real"}.
    """
    ok = lambda a, v: metrics.decodable(a, v, tok.horizon, tok.action_dim)
    by_length = {}
    for length in range(1, tok.max_tokens + 1):
        t, lens = metrics.random_sequences(rng, tok.vocab_size, tok.max_tokens, length, num_random)
        by_length[length] = float(np.mean(ok(*detokenize_blocks(tok, t, lens))))
    replaced = metrics.replace_one_token(rng, tokens, lengths, tok.vocab_size)
    replace_ok = ok(*detokenize_blocks(tok, replaced, lengths))
    cut, cut_lengths, cuttable = metrics.truncate_sequences(rng, tokens, lengths)
    cut_ok = ok(*detokenize_blocks(tok, cut, cut_lengths))[cuttable]
    return {"random": float(np.mean(list(by_length.values()))), "random_by_length": by_length,
            "replace_one": float(np.mean(replace_ok)), "truncate": float(np.mean(cut_ok)) if cut_ok.size else None,
            "num_random_per_length": num_random, "num_real": int(len(tokens))}


def prefix_curve(tok, chunks: np.ndarray, common: Normalizer) -> list[dict]:
    """MSE at every token count of `report_prefix_lengths(tok)` on raw chunks (V, H, D_a).

    Returns:
      [{"tokens": k, "mse_norm" (in `common`'s normalized space), "mse_raw", "variance_explained" (normalized),
        "valid_fraction"}] floats, one per k ([] for tokenizers whose prefixes do not decode).
    """
    tokens, lengths = tok.tokenize(chunks)
    target_norm = common.normalize(chunks)
    variance = metrics.total_variance(target_norm)
    curve = []
    for k in report_prefix_lengths(tok):
        rec_k, valid_k = detokenize_blocks(tok, tokens, np.minimum(lengths, k).astype(np.int32))
        m_norm = float(np.nanmean(metrics.per_chunk_mse(common.normalize(rec_k), target_norm)))
        curve.append({"tokens": k, "mse_norm": m_norm,
                      "mse_raw": float(np.nanmean(metrics.per_chunk_mse(rec_k, chunks))),
                      "variance_explained": metrics.variance_explained(m_norm, variance),
                      "valid_fraction": float(valid_k.mean())})
    return curve


def unseen_result(tok, chunks: np.ndarray, common: Normalizer) -> dict:
    """Full-length and per-prefix MSE of `tok` on raw chunks (V, H, D_a) of data it was not trained on.

    Returns:
      {"num_chunks", "mse_norm", "mse_raw", "valid_fraction", "prefix": `prefix_curve`}.
    """
    tokens, lengths = tok.tokenize(chunks)
    recon, valid = detokenize_blocks(tok, tokens, lengths)
    return {"num_chunks": int(len(chunks)),
            "mse_norm": float(np.nanmean(metrics.per_chunk_mse(common.normalize(recon), common.normalize(chunks)))),
            "mse_raw": float(np.nanmean(metrics.per_chunk_mse(recon, chunks))), "valid_fraction": float(valid.mean()),
            "prefix": prefix_curve(tok, chunks, common)}


def evaluate_tokenizer(tok, chunks: np.ndarray, common: Normalizer, rng: np.random.Generator,
                       num_random: int) -> dict:
    """Every report number of one tokenizer on raw held-out chunks (V, H, D_a) float.

    Returns:
      {"label": None (set by the caller), "type", "description", "vocab_size", "max_tokens", "fixed_length",
       "tokens_per_chunk": {"mean", "max", "min"}, "valid_fraction", "mse_norm", "mse_raw", "variance_explained",
       "timing_ms_per_chunk": {"tokenize", "detokenize"}, "prefix": `prefix_curve`, "decodability",
       "token_stats": `metrics.token_statistics`} plus the keys of `tok.diagnostics` (e.g. "config",
       "bin_bound", "fast_quantization").
    """
    detokenize_blocks(tok, *tok.tokenize(chunks))  # warm-up: compile first, so the timings measure running only
    start = time.perf_counter()
    tokens, lengths = tok.tokenize(chunks)
    tokenize_s = time.perf_counter() - start
    start = time.perf_counter()
    recon, valid = detokenize_blocks(tok, tokens, lengths)
    detokenize_s = time.perf_counter() - start
    target_norm = common.normalize(chunks)
    mse_norm = float(np.nanmean(metrics.per_chunk_mse(common.normalize(recon), target_norm)))
    result = {
        "label": None, "type": tok.name, "description": repr(tok), "vocab_size": int(tok.vocab_size),
        "max_tokens": int(tok.max_tokens), "fixed_length": bool(tok.fixed_length),
        "tokens_per_chunk": {"mean": float(lengths.mean()), "max": int(lengths.max()), "min": int(lengths.min())},
        "valid_fraction": float(valid.mean()), "mse_norm": mse_norm,
        "mse_raw": float(np.nanmean(metrics.per_chunk_mse(recon, chunks))),
        "variance_explained": metrics.variance_explained(mse_norm, metrics.total_variance(target_norm)),
        "timing_ms_per_chunk": {"tokenize": 1e3 * tokenize_s / len(chunks),
                                "detokenize": 1e3 * detokenize_s / len(chunks)},
        "prefix": prefix_curve(tok, chunks, common),
        "decodability": decodability(tok, tokens, lengths, rng, num_random),
        "token_stats": metrics.token_statistics(tokens, lengths, tok.vocab_size),
    }
    result.update(tokenizer_diagnostics(tok, chunks, recon, valid))
    return result


def evaluate_all(tokenizers: Mapping[str, Any], chunks: np.ndarray, common: Normalizer,
                 unseen: Mapping[str, np.ndarray], rng: np.random.Generator, num_random: int,
                 labels: Mapping[str, str] = LABELS, extra: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """`evaluate_tokenizer` of every tokenizer (in order, sharing `rng`) on held-out raw chunks (V, H, D_a), with
    `unseen_result` on every unseen set {label: (M, H, D_a) raw chunks}.

    Returns:
      {key: result with "label" (labels[key], else key), "unseen": {label: `unseen_result`}, "eval_s", and the
       items of extra[key] if given (e.g. {"fit_s": seconds})}.
    """
    results = {}
    for key, tok in tokenizers.items():
        start = time.perf_counter()
        result = evaluate_tokenizer(tok, chunks, common, rng, num_random)
        result["label"] = labels.get(key, key)
        result["unseen"] = {label: unseen_result(tok, c, common) for label, c in unseen.items()}
        result["eval_s"] = time.perf_counter() - start
        result.update((extra or {}).get(key, {}))
        _LOG.info("%s evaluated in %.1f s", result["label"], result["eval_s"])
        results[key] = result
    return results


def learned_shape(tokenizers: Mapping[str, Any]) -> tuple[int, int] | None:
    """(horizon, action_dim) shared by every tokenizer of `tokenizers`; None when it is empty. ValueError when
    they disagree."""
    shapes = {(t.horizon, t.action_dim) for t in tokenizers.values()}
    if len(shapes) > 1:
        raise ValueError(f"The learned tokenizers disagree on (horizon, action_dim): {sorted(shapes)}.")
    return next(iter(shapes)) if shapes else None


def check_action_dims(chunks: np.ndarray, dataset: str, learned_dim: int | None,
                      unseen: Mapping[str, np.ndarray]) -> int:
    """D_a of the held-out chunks (V, H, D_a) of `dataset`; ValueError when the learned tokenizers (`learned_dim`,
    None: there are none) or an unseen set {label: (M, H, D_a)} has another action dimension."""
    action_dim = int(chunks.shape[-1])
    if learned_dim not in (None, action_dim):
        raise ValueError(f"The learned tokenizers have action_dim {learned_dim} but {dataset} has {action_dim}-D "
                         "actions; evaluate them on the dataset they were trained on.")
    for label, c in unseen.items():
        if c.shape[-1] != action_dim:
            raise ValueError(f"The unseen dataset '{label}' has {c.shape[-1]}-D actions but {dataset} has "
                             f"{action_dim}-D ones; give unseen data of the same robot.")
    return action_dim


def fit_baselines(train: np.ndarray, options: Mapping[str, dict]) -> tuple[dict[str, Any], dict[str, float]]:
    """Fits `fit_action_tokenizer(name, train, **options[name])` for every name of `options`, in order, on raw
    training chunks (M, H, D_a) float. Returns ({name: tokenizer}, {name: fit seconds})."""
    tokenizers, seconds = {}, {}
    for name, kwargs in options.items():
        start = time.perf_counter()
        tokenizers[name] = fit_action_tokenizer(name, train, **kwargs)
        seconds[name] = time.perf_counter() - start
    return tokenizers, seconds


def normalizer_is_identity(normalizer: Normalizer, atol: float = 1e-4) -> bool:
    """True when `normalizer` maps raw actions to themselves (scale 1, offset 0): raw and normalized MSE agree."""
    return bool(np.allclose(normalizer.scale, 1.0, atol=atol) and np.allclose(normalizer.offset, 0.0, atol=atol))


# ----------------------------------------------------------------------------------------------------------------
# acceptance checks: a table of named checks with thresholds
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CheckInput:
    """What one acceptance check measures: `evaluate_all` results, its thresholds, the chunk shape and (for a
    per-unseen check) the label of the unseen dataset."""

    results: Mapping[str, dict]
    thresholds: Mapping[str, float]
    horizon: int
    action_dim: int
    unseen: str | None = None


@dataclasses.dataclass(frozen=True)
class AcceptanceCheck:
    """A named pass/fail check of the report.

    Attributes:
      name: title, a str.format template over the thresholds and `unseen`.
      needs: tokenizer keys that must all be in the results; the check is left out otherwise.
      measure: CheckInput -> (passed, detail text).
      thresholds: the numbers `measure` compares against, by name.
      per_unseen: run once per unseen dataset of the tokenizer `needs[0]` (CheckInput.unseen set) instead of once.
    """

    name: str
    needs: tuple[str, ...]
    measure: Callable[[CheckInput], tuple[bool, str]]
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    per_unseen: bool = False


def fmt(x, spec: str = ".4g") -> str:
    """`format(x, spec)`, or "n/a" for None and NaN."""
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _no_rise(curve: list[float], max_rise_percent: float) -> bool:
    """True when no MSE of the curve is more than max_rise_percent % above the one before."""
    return all(b <= a * (1 + max_rise_percent / 100) for a, b in zip(curve, curve[1:]))


def _all_decodable(c: CheckInput, key: str) -> tuple[bool, str]:
    d = c.results[key]["decodability"]
    return (d["random"] == 1.0 and d["replace_one"] == 1.0 and d["truncate"] == 1.0,
            f"random {d['random']:.4f}, replace one {d['replace_one']:.4f}, truncate {fmt(d['truncate'], '.4f')}")


def _fast_partial(c: CheckInput) -> tuple[bool, str]:
    d = c.results["fast"]["decodability"]
    return d["random"] < 1.0, f"random {d['random']:.4f}"


def _fast_round_trip(c: CheckInput) -> tuple[bool, str]:
    q = c.results["fast"]["fast_quantization"]
    worst = q["max_chunk_mse_norm_own"]
    passed = (worst is not None and worst <= q["mse_bound_per_chunk"] * (1 + c.thresholds["rel_tol"])
              and q["clean_chunks_decoded"] == 1.0)
    return passed, (f"worst chunk MSE {fmt(worst, '.3g')} <= (0.5/scale)^2 = {q['mse_bound_per_chunk']:.3g} on "
                    f"{q['chunks_clean']} chunks without clipped coefficients or truncation (all decoded: "
                    f"{q['clean_chunks_decoded'] == 1.0})")


def _oat_no_rise(c: CheckInput) -> tuple[bool, str]:
    curve = [p["mse_norm"] for p in c.results["oat"]["prefix"]]
    worst = max(range(1, len(curve)), key=lambda i: curve[i] / curve[i - 1], default=0)
    detail = ", ".join(f"k={i + 1}: {v:.4g}" for i, v in enumerate(curve))
    if worst:
        detail += f" (largest step: k={worst + 1} / k={worst} = {curve[worst] / curve[worst - 1]:.3f})"
    return _no_rise(curve, c.thresholds["max_rise_percent"]), detail


def _oat_fixed_length(c: CheckInput) -> tuple[bool, str]:
    r = c.results["oat"]
    n = r["tokens_per_chunk"]
    return n["max"] == r["max_tokens"] == n["min"], f"{n['mean']:g} tokens"


def _oat_unseen(c: CheckInput) -> tuple[bool, str]:
    curve = [p["mse_norm"] for p in c.results["oat"]["unseen"][c.unseen]["prefix"]]
    passed = curve[-1] < c.thresholds["max_mse"] and _no_rise(curve, c.thresholds["max_rise_percent"])
    return passed, ", ".join(f"k={i + 1}: {v:.4g}" for i, v in enumerate(curve))


def _oat_vs_oatx(c: CheckInput, index: int, spec: str) -> tuple[bool, str]:
    """OAT's MSE at prefix `index` (0: k = 1, -1: k = N) at most thresholds["ratio"] times OAT x's."""
    oat, oatx = (c.results[key]["prefix"][index]["mse_norm"] for key in ("oat", "oatx"))
    return oat <= c.thresholds["ratio"] * oatx, f"OAT {oat:.4g} vs OAT x {oatx:.4g} ({oat / oatx:{spec}}x)"


def _bin_length(c: CheckInput) -> tuple[bool, str]:
    n = c.results["bin"]["tokens_per_chunk"]
    return (n["min"] == n["max"] == c.horizon * c.action_dim,
            f"{n['mean']:g} = {c.horizon} x {c.action_dim}")


def _bin_bound(c: CheckInput) -> tuple[bool, str]:
    b = c.results["bin"]["bin_bound"]
    rmse, analytic = np.sqrt(b["mse_norm_own"]), np.sqrt(b["uniform_mse"])
    passed = b["max_abs_error_in_range"] <= b["half_width"] + 1e-6 and abs(rmse - analytic) <= b["bin_width"]
    return passed, (f"max |error| {b['max_abs_error_in_range']:.3g} <= w/2 = {b['half_width']:.3g} (in-range "
                    f"values); RMSE {rmse:.3g} vs w/sqrt(12) = {analytic:.3g} (normalized units)")


ACCEPTANCE_CHECKS = (
    AcceptanceCheck("OAT 100% decodable in all three tests", ("oat",), functools.partial(_all_decodable, key="oat")),
    AcceptanceCheck("Bin 100% decodable in all three tests", ("bin",), functools.partial(_all_decodable, key="bin")),
    AcceptanceCheck("FAST below 100% decodable on random sequences", ("fast",), _fast_partial),
    AcceptanceCheck("FAST round-trips real chunks within its quantization error", ("fast",), _fast_round_trip,
                    {"rel_tol": 1e-4}),
    AcceptanceCheck("OAT MSE does not rise over k = 1..N (each k at most {max_rise_percent:g}% above k - 1)",
                    ("oat",), _oat_no_rise, {"max_rise_percent": 2.0}),
    AcceptanceCheck("OAT = N tokens per chunk", ("oat",), _oat_fixed_length),
    AcceptanceCheck("OAT on unseen data '{unseen}': k = N MSE below {max_mse:g} and no rise over k", ("oat",),
                    _oat_unseen, {"max_mse": 0.055, "max_rise_percent": 2.0}, per_unseen=True),
    AcceptanceCheck("OAT k = N within {ratio:g}x of OAT x (same budget)", ("oat", "oatx"),
                    functools.partial(_oat_vs_oatx, index=-1, spec=".2f"), {"ratio": 1.25}),
    AcceptanceCheck("OAT k = 1 at most {ratio:g}x OAT x's k = 1 (ordering kept)", ("oat", "oatx"),
                    functools.partial(_oat_vs_oatx, index=0, spec=".3f"), {"ratio": 0.2}),
    AcceptanceCheck("Bin = H * D_a tokens per chunk", ("bin",), _bin_length),
    AcceptanceCheck("Bin error within a bin width of the analytic bound", ("bin",), _bin_bound),
)


def acceptance_checks(results: Mapping[str, dict], horizon: int, action_dim: int,
                      checks: tuple[AcceptanceCheck, ...] = ACCEPTANCE_CHECKS) -> list[dict]:
    """Runs every check whose tokenizers are present in `evaluate_all` results, in table order.

    Returns:
      [{"check": title, "passed": bool, "detail": measured numbers}].
    """
    out = []
    for check in checks:
        if not all(key in results for key in check.needs):
            continue
        labels = list(results[check.needs[0]].get("unseen", {})) if check.per_unseen else [None]
        for label in labels:
            passed, detail = check.measure(CheckInput(results, check.thresholds, horizon, action_dim, label))
            out.append({"check": check.name.format(unseen=label, **check.thresholds), "passed": bool(passed),
                        "detail": detail})
    return out


# ----------------------------------------------------------------------------------------------------------------
# output helpers
# ----------------------------------------------------------------------------------------------------------------
def json_safe(x):
    """A copy of nested dicts / lists with NaN -> None (strict JSON), numpy scalars -> Python, dict keys -> str."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def display_path(path: str) -> str:
    """`path` relative to the working directory when it lies inside it (so committed reports hold no host paths),
    else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
