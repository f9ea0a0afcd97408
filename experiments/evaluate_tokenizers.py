r"""Tokenizer evaluation report: OAT, OAT x, QueST-style, Bin and FAST on held-out episodes of an RLDS dataset.

  python -m experiments.evaluate_tokenizers --oat=runs/oat --oatx=runs/oatx --quest=runs/quest --out=report_dir
      [--dataset=RLDS_BUILDER_DIR] [--unseen=auto|label=DIR,...] [--max_chunks=4096] [--num_random=64] [--seed=0]

--oat / --oatx / --quest take training workdirs of experiments.train (configs oat.py, oat.py:oatx, oat.py:quest) or
saved tokenizer directories; any of them may be left out. Bin and FAST are fitted here on the train split of the
same episode split (--val_fraction, --split_seed: keep the training run's values) and saved under <out>/tokenizers/.
Everything is measured on the validation episodes (at most --max_chunks chunks, evenly spaced). --unseen adds
datasets no tokenizer was trained on (every episode; e.g. Meta-World tasks outside the training tasks, made with
`python -m data_pipelines.metaworld --tasks=heldout ...`): the per-k MSE of every tokenizer is reported on each.
'auto' (default) is the embedded unseen-task set when --dataset is the embedded MT10 dataset, else none.

Writes <out>/report.md, <out>/report.json and plots: rate_distortion.png (tokens per chunk vs normalized MSE, every
tokenizer; OAT-family and Bin at every prefix length), decodability.png, token_entropy.png.

"Normalized" numbers are in one shared space for every tokenizer: per-dimension min/max of the train split mapped
to [-1, 1] (the 'limits' normalizer of training).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (through the data pipeline)

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from oat_jax.action_tokenizers import metrics  # noqa: E402
from oat_jax.action_tokenizers.registry import fit_action_tokenizer, load_action_tokenizer  # noqa: E402
from oat_jax.normalizer import ActionNormalizer  # noqa: E402

LEARNED = (("oat", "OAT"), ("oatx", "OAT x"), ("quest", "QueST"))  # flag -> label of the OAT-family tokenizers
LABELS = dict(LEARNED, bin="Bin", fast="FAST")
MAX_RISE = 1.02  # "MSE does not rise over k": each k at most 2% above k - 1
FULL_LENGTH_RATIO = 1.25  # OAT's k = N error at most this multiple of OAT x's
COARSE_RATIO = 0.2  # OAT's k = 1 error at most this fraction of OAT x's (ordering kept)
UNSEEN_MAX_MSE = 0.055  # OAT's k = N error on unseen data below this
DECODE_BLOCK = 4096  # rows per detokenize call in the probes


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def load_data(dataset: str, horizon: int, val_fraction: float, split_seed: int, max_chunks: int):
    """-> (train chunks (M, H, D_a), val chunks (V, H, D_a) float32 raw, train statistics dict)."""
    import ml_collections

    from data_pipelines import loader, statistics
    from oat_jax.training.data import load_chunks

    spec = loader.DatasetSpec(path=dataset)
    data_cfg = ml_collections.ConfigDict(dict(val_fraction=val_fraction, split_seed=split_seed))
    stats = statistics.get_dataset_statistics(spec, split="train", val_fraction=val_fraction, split_seed=split_seed)
    train = load_chunks(spec, data_cfg, "train", horizon)
    val = load_chunks(spec, data_cfg, "val", horizon)
    if 0 < max_chunks < len(val):
        val = val[np.linspace(0, len(val) - 1, max_chunks).round().astype(np.int64)]
    return train, val, stats


def load_unseen(unseen: str, dataset: str, horizon: int, max_chunks: int) -> dict[str, np.ndarray]:
    """{label: (M, H, D_a) float32 raw chunks of every episode} for --unseen ('auto': the embedded unseen-task set
    when `dataset` is the embedded MT10 dataset)."""
    import ml_collections

    from data_pipelines import EMBEDDED_DATASET_DIR
    from oat_jax.training.data import eval_dataset_specs, load_chunks

    if unseen == "auto":
        same = os.path.abspath(dataset) == os.path.abspath(EMBEDDED_DATASET_DIR)
        unseen = "metaworld_heldout" if same else ""
    data_cfg = ml_collections.ConfigDict(dict(val_fraction=0.1, split_seed=0))
    out = {}
    for label, spec in eval_dataset_specs(unseen, flag="--unseen").items():
        chunks = load_chunks(spec, data_cfg, "all", horizon)
        if 0 < max_chunks < len(chunks):
            chunks = chunks[np.linspace(0, len(chunks) - 1, max_chunks).round().astype(np.int64)]
        out[label] = chunks
    return out


# ----------------------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------------------
def _detokenize(tok, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [tok.detokenize(tokens[i:i + DECODE_BLOCK], lengths[i:i + DECODE_BLOCK])
             for i in range(0, len(tokens), DECODE_BLOCK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def prefix_lengths(tok) -> list[int]:
    """Token counts at which the rate-distortion curve is measured: OAT family 1..N; Bin whole steps
    D_a * (1, 2, 4, ..., H); FAST none (its prefixes do not decode)."""
    if tok.name == "oat":
        return list(range(1, tok.max_tokens + 1))
    if tok.name == "bin":
        steps = sorted({min(2 ** i, tok.horizon) for i in range(int(np.ceil(np.log2(tok.horizon))) + 1)})
        return [s * tok.action_dim for s in steps]
    return []


def decodability(tok, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, num_random: int) -> dict:
    """Fractions of (a) uniformly random sequences of every length 1..max_tokens, (b) real sequences with one token
    replaced, (c) real sequences truncated at a random position, that decode to finite chunks of shape (H, D_a)."""
    ok = lambda a, v: metrics.decodable(a, v, tok.horizon, tok.action_dim)
    by_length = {}
    for length in range(1, tok.max_tokens + 1):
        t, lens = metrics.random_sequences(rng, tok.vocab_size, tok.max_tokens, length, num_random)
        by_length[length] = float(np.mean(ok(*_detokenize(tok, t, lens))))
    replaced = metrics.replace_one_token(rng, tokens, lengths, tok.vocab_size)
    replace_ok = ok(*_detokenize(tok, replaced, lengths))
    cut, cut_lengths, cuttable = metrics.truncate_sequences(rng, tokens, lengths)
    cut_ok = ok(*_detokenize(tok, cut, cut_lengths))[cuttable]
    return {"random": float(np.mean(list(by_length.values()))), "random_by_length": by_length,
            "replace_one": float(np.mean(replace_ok)), "truncate": float(np.mean(cut_ok)) if cut_ok.size else None,
            "num_random_per_length": num_random, "num_real": int(len(tokens))}


def prefix_curve(tok, chunks: np.ndarray, common: ActionNormalizer) -> list[dict]:
    """MSE (normalized in the shared space, and raw) at every prefix length of `prefix_lengths(tok)` on raw chunks
    (V, H, D_a): [{"tokens", "mse_norm", "mse_raw", "variance_explained", "valid_fraction"}]."""
    tokens, lengths = tok.tokenize(chunks)
    target_norm = common.normalize(chunks)
    variance = metrics.total_variance(target_norm)
    curve = []
    for k in prefix_lengths(tok):
        rec_k, valid_k = _detokenize(tok, tokens, np.minimum(lengths, k).astype(np.int32))
        m_norm = float(np.nanmean(metrics.per_chunk_mse(common.normalize(rec_k), target_norm)))
        curve.append({"tokens": k, "mse_norm": m_norm,
                      "mse_raw": float(np.nanmean(metrics.per_chunk_mse(rec_k, chunks))),
                      "variance_explained": metrics.variance_explained(m_norm, variance),
                      "valid_fraction": float(valid_k.mean())})
    return curve


def unseen_result(tok, chunks: np.ndarray, common: ActionNormalizer) -> dict:
    """Full-length and per-prefix MSE of `tok` on unseen raw chunks (V, H, D_a)."""
    tokens, lengths = tok.tokenize(chunks)
    recon, valid = _detokenize(tok, tokens, lengths)
    return {"num_chunks": int(len(chunks)),
            "mse_norm": float(np.nanmean(metrics.per_chunk_mse(common.normalize(recon), common.normalize(chunks)))),
            "mse_raw": float(np.nanmean(metrics.per_chunk_mse(recon, chunks))), "valid_fraction": float(valid.mean()),
            "prefix": prefix_curve(tok, chunks, common)}


def evaluate_tokenizer(tok, chunks: np.ndarray, common: ActionNormalizer, rng: np.random.Generator,
                       num_random: int) -> dict:
    """Every report number of one tokenizer on raw held-out chunks (V, H, D_a)."""
    _detokenize(tok, *tok.tokenize(chunks))  # warm-up: compile first, so the timings below measure running only
    start = time.perf_counter()
    tokens, lengths = tok.tokenize(chunks)
    tokenize_s = time.perf_counter() - start
    start = time.perf_counter()
    recon, valid = _detokenize(tok, tokens, lengths)
    detokenize_s = time.perf_counter() - start
    target_norm = common.normalize(chunks)
    variance = metrics.total_variance(target_norm)
    mse_norm = metrics.per_chunk_mse(common.normalize(recon), target_norm)
    mse_raw = metrics.per_chunk_mse(recon, chunks)
    result = {
        "label": None, "type": tok.name, "description": repr(tok), "vocab_size": int(tok.vocab_size),
        "max_tokens": int(tok.max_tokens), "fixed_length": bool(tok.fixed_length),
        "tokens_per_chunk": {"mean": float(lengths.mean()), "max": int(lengths.max()), "min": int(lengths.min())},
        "valid_fraction": float(valid.mean()),
        "mse_norm": float(np.nanmean(mse_norm)), "mse_raw": float(np.nanmean(mse_raw)),
        "variance_explained": metrics.variance_explained(float(np.nanmean(mse_norm)), variance),
        "timing_ms_per_chunk": {"tokenize": 1e3 * tokenize_s / len(chunks),
                                "detokenize": 1e3 * detokenize_s / len(chunks)},
    }
    result["prefix"] = prefix_curve(tok, chunks, common)
    if tok.name == "oat":
        result["config"] = tok.config.to_dict()
    result["decodability"] = decodability(tok, tokens, lengths, rng, num_random)
    result["token_stats"] = metrics.token_statistics(tokens, lengths, tok.vocab_size)
    if tok.name == "bin":
        x = tok.normalizer.normalize(chunks)
        inside = (x >= -1.0) & (x <= 1.0)
        err = np.abs(tok.normalizer.normalize(recon) - x)
        result["bin_bound"] = {
            "bin_width": tok.bin_width, "half_width": tok.bin_width / 2, "uniform_mse": tok.bin_width ** 2 / 12,
            "max_abs_error_in_range": float(err[inside].max()), "mse_norm_own": float(np.mean(np.square(err))),
            "fraction_out_of_range": float(1.0 - inside.mean()),
            "fraction_at_range_limits": float(np.mean(np.abs(x) >= 1.0 - 1e-6))}
    if tok.name == "fast":
        clean = (tok.clipped_coefficients(chunks) == 0) & (tok.token_lengths(chunks) <= tok.max_tokens)
        own = metrics.per_chunk_mse(tok.normalizer.normalize(recon), tok.normalizer.normalize(chunks))
        result["fast_quantization"] = {
            "scale": tok.scale, "mse_bound_per_chunk": tok.quantization_mse_bound,
            "mse_uniform_rounding": (1.0 / tok.scale) ** 2 / 12,
            "max_chunk_mse_norm_own": float(np.max(own[clean])) if clean.any() else None,
            "mean_mse_norm_own": float(np.mean(own[clean])) if clean.any() else None,
            "chunks_clean": int(clean.sum()), "chunks_with_clipped_coefficients":
                int(np.sum(tok.clipped_coefficients(chunks) > 0)),
            "chunks_truncated": int(np.sum(tok.token_lengths(chunks) > tok.max_tokens)),
            "clean_chunks_decoded": float(valid[clean].mean()) if clean.any() else None}
    return result


def acceptance_checks(results: dict, horizon: int, action_dim: int) -> list[dict]:
    """The issue's acceptance points that the present tokenizers allow checking: [{check, passed, detail}]."""
    checks = []

    def add(check, passed, detail):
        checks.append({"check": check, "passed": bool(passed), "detail": detail})

    for key in ("oat", "bin"):
        if key in results:
            d = results[key]["decodability"]
            add(f"{LABELS[key]} 100% decodable in all three tests",
                d["random"] == 1.0 and d["replace_one"] == 1.0 and d["truncate"] == 1.0,
                f"random {d['random']:.4f}, replace one {d['replace_one']:.4f}, truncate {_fmt(d['truncate'], '.4f')}")
    if "fast" in results:
        d = results["fast"]["decodability"]
        add("FAST below 100% decodable on random sequences", d["random"] < 1.0, f"random {d['random']:.4f}")
        q = results["fast"]["fast_quantization"]
        worst = q["max_chunk_mse_norm_own"]
        add("FAST round-trips real chunks within its quantization error",
            worst is not None and worst <= q["mse_bound_per_chunk"] * (1 + 1e-4) and q["clean_chunks_decoded"] == 1.0,
            f"worst chunk MSE {_fmt(worst, '.3g')} <= (0.5/scale)^2 = {q['mse_bound_per_chunk']:.3g} on "
            f"{q['chunks_clean']} chunks without clipped coefficients or truncation (all decoded: "
            f"{q['clean_chunks_decoded'] == 1.0})")
    if "oat" in results:
        curve = [p["mse_norm"] for p in results["oat"]["prefix"]]
        worst = max(range(1, len(curve)), key=lambda i: curve[i] / curve[i - 1], default=0)
        add(f"OAT MSE does not rise over k = 1..N (each k at most {100 * (MAX_RISE - 1):g}% above k - 1)",
            all(b <= a * MAX_RISE for a, b in zip(curve, curve[1:])),
            ", ".join(f"k={i + 1}: {v:.4g}" for i, v in enumerate(curve))
            + (f" (largest step: k={worst + 1} / k={worst} = {curve[worst] / curve[worst - 1]:.3f})" if worst else ""))
        add("OAT = N tokens per chunk", results["oat"]["tokens_per_chunk"]["max"] == results["oat"]["max_tokens"]
            == results["oat"]["tokens_per_chunk"]["min"], f"{results['oat']['tokens_per_chunk']['mean']:g} tokens")
        for label, u in results["oat"].get("unseen", {}).items():
            ucurve = [p["mse_norm"] for p in u["prefix"]]
            add(f"OAT on unseen data '{label}': k = N MSE below {UNSEEN_MAX_MSE:g} and no rise over k",
                ucurve[-1] < UNSEEN_MAX_MSE and all(b <= a * MAX_RISE for a, b in zip(ucurve, ucurve[1:])),
                ", ".join(f"k={i + 1}: {v:.4g}" for i, v in enumerate(ucurve)))
    if "oat" in results and "oatx" in results:
        first = lambda key: results[key]["prefix"][0]["mse_norm"]
        last = lambda key: results[key]["prefix"][-1]["mse_norm"]
        add(f"OAT k = N within {FULL_LENGTH_RATIO:g}x of OAT x (same budget)",
            last("oat") <= FULL_LENGTH_RATIO * last("oatx"),
            f"OAT {last('oat'):.4g} vs OAT x {last('oatx'):.4g} ({last('oat') / last('oatx'):.2f}x)")
        add(f"OAT k = 1 at most {COARSE_RATIO:g}x OAT x's k = 1 (ordering kept)",
            first("oat") <= COARSE_RATIO * first("oatx"),
            f"OAT {first('oat'):.4g} vs OAT x {first('oatx'):.4g} ({first('oat') / first('oatx'):.3f}x)")
    if "bin" in results:
        b = results["bin"]
        add("Bin = H * D_a tokens per chunk", b["tokens_per_chunk"]["min"] == b["tokens_per_chunk"]["max"]
            == horizon * action_dim, f"{b['tokens_per_chunk']['mean']:g} = {horizon} x {action_dim}")
        bb = b["bin_bound"]
        rmse, analytic = np.sqrt(bb["mse_norm_own"]), np.sqrt(bb["uniform_mse"])
        add("Bin error within a bin width of the analytic bound",
            bb["max_abs_error_in_range"] <= bb["half_width"] + 1e-6 and abs(rmse - analytic) <= bb["bin_width"],
            f"max |error| {bb['max_abs_error_in_range']:.3g} <= w/2 = {bb['half_width']:.3g} (in-range values); "
            f"RMSE {rmse:.3g} vs w/sqrt(12) = {analytic:.3g} (normalized units)")
    return checks


# ----------------------------------------------------------------------------------------------------------------
# plots and markdown
# ----------------------------------------------------------------------------------------------------------------
def write_plots(results: dict, out: str) -> list[str]:
    """rate_distortion.png, decodability.png, token_entropy.png in `out`; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    panels = [("held-out episodes", lambda r: r)]
    panels += [(f"unseen: {label}", lambda r, label=label: r["unseen"][label])
               for label in next(iter(results.values())).get("unseen", {})]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for ax, (title, pick) in zip(axes[0], panels):
        for key, r in results.items():
            part = pick(r)
            if part["prefix"]:
                xs = [p["tokens"] for p in part["prefix"]]
                ax.plot(xs, [p["mse_norm"] for p in part["prefix"]], "o-", ms=3, label=f"{r['label']} (prefixes)")
            else:
                ax.plot([r["tokens_per_chunk"]["mean"]], [part["mse_norm"]], "s", ms=7,
                        label=f"{r['label']} (mean length)")
        ax.set(xscale="log", yscale="log", xlabel="tokens per chunk", ylabel="reconstruction MSE (normalized)",
               title=f"Rate-distortion: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rate_distortion.png"), dpi=90)
    plt.close(fig)
    names.append("rate_distortion.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    tests = ("random", "replace_one", "truncate")
    width = 0.8 / max(len(results), 1)
    for i, (key, r) in enumerate(results.items()):
        d = r["decodability"]
        ax1.bar(np.arange(3) + i * width, [d[t] or 0.0 for t in tests], width, label=r["label"])
        lengths = sorted(d["random_by_length"], key=int)
        ax2.plot([int(L) for L in lengths], [d["random_by_length"][L] for L in lengths], ".-", ms=3, label=r["label"])
    ax1.set_xticks(np.arange(3) + 0.4 - width / 2, ["(a) random", "(b) one token replaced", "(c) truncated"])
    ax1.set(ylabel="fraction decodable", ylim=(0, 1.25), title="Decodability")
    ax1.legend(fontsize=7, loc="upper center", ncol=len(results))
    ax2.set(xscale="log", xlabel="random sequence length", ylabel="fraction decodable", ylim=(-0.02, 1.05),
            title="(a) by length")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "decodability.png"), dpi=90)
    plt.close(fig)
    names.append("decodability.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, r in results.items():
        ent = r["token_stats"]["entropy_bits"]
        label = f"{r['label']} (max {r['token_stats']['max_entropy_bits']:.1f})"
        ax.plot(np.arange(1, len(ent) + 1), ent, ".-", ms=3, label=label)
    ax.set(xscale="log", xlabel="token position", ylabel="entropy (bits)", title="Per-position token entropy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "token_entropy.png"), dpi=90)
    plt.close(fig)
    names.append("token_entropy.png")
    return names


def _json_safe(x):
    """NaN -> None (strict JSON), numpy scalars -> Python, dict keys -> str."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _fmt(x, spec=".4g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def markdown(report: dict) -> str:
    """The human-readable report."""
    results, meta = report["tokenizers"], report["meta"]
    lines = ["# Tokenizer evaluation report", "",
             f"Dataset `{meta['dataset']}`: {meta['num_val_chunks']} held-out chunks (validation episodes, "
             f"val_fraction {meta['val_fraction']}, split_seed {meta['split_seed']}), H = {meta['horizon']}, "
             f"D_a = {meta['action_dim']}; Bin and FAST fitted on {meta['num_train_chunks']} train chunks. "
             "Normalized MSE is in one shared space (train-split min/max -> [-1, 1])"
             + (" (here the identity: every action dimension spans [-1, 1], so raw and normalized MSE coincide)."
                if meta.get("normalizer_is_identity") else "."), "",
             f"Command: `{meta['command']}` ({meta['wall_s']:.0f} s)", "",
             "## Summary", "",
             "| tokenizer | tokens/chunk (mean / max) | vocab | MSE norm | MSE raw | variance explained | "
             "decodable: random / one replaced / truncated | mean entropy (bits) | codebook usage |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        d, t = r["decodability"], r["token_stats"]
        lines.append(f"| {r['label']} | {r['tokens_per_chunk']['mean']:.1f} / {r['tokens_per_chunk']['max']} | "
                     f"{r['vocab_size']} | {_fmt(r['mse_norm'])} | {_fmt(r['mse_raw'])} | "
                     f"{_fmt(r['variance_explained'], '.4f')} | {d['random']:.3f} / {d['replace_one']:.3f} / "
                     f"{_fmt(d['truncate'], '.3f')} | {t['mean_entropy_bits']:.2f} | {t['usage_total']:.3f} |")
    family = [r for r in results.values() if r["type"] == "oat"]
    if family:
        lines += ["", "## Prefix reconstruction (OAT family): MSE normalized (variance explained)", "",
                  "| k | " + " | ".join(r["label"] for r in family) + " |",
                  "|---|" + "---|" * len(family)]
        for i in range(max(len(r["prefix"]) for r in family)):
            row = [f"{r['prefix'][i]['mse_norm']:.4g} ({r['prefix'][i]['variance_explained']:.3f})"
                   if i < len(r["prefix"]) else "" for r in family]
            lines.append(f"| {i + 1} | " + " | ".join(row) + " |")
        lines += ["", "Raw-unit MSE per k: " + "; ".join(
            f"{r['label']}: " + ", ".join(f"{p['mse_raw']:.3g}" for p in r["prefix"]) for r in family) + ".",
                  "OAT x and QueST-style were trained with all N tokens only (no nested dropout): their prefixes "
                  "decode mechanically (dropped positions take the mask vector) but were never a training target, "
                  "which their k < N errors reflect."]
        if results.get("oat", {}).get("config", {}).get("nested_dropout") == "pow2":
            lines.append("OAT's nested dropout ('pow2') trains k in {1, 2, 4, 8} only: the other k are prefix "
                         "lengths it never saw in training.")
    labels = list(meta.get("unseen", {}))
    for label in labels:
        lines += ["", f"## Unseen data '{label}' ({meta['unseen'][label]['num_chunks']} chunks, every episode; no "
                  "tokenizer trained on it): MSE normalized", "",
                  "| tokenizer | tokens/chunk | MSE at full length | MSE per prefix length (tokens: MSE) |",
                  "|---|---|---|---|"]
        for r in results.values():
            u = r["unseen"][label]
            curve = ", ".join(f"{p['tokens']}: {p['mse_norm']:.3g}" for p in u["prefix"]) or "prefixes do not decode"
            lines.append(f"| {r['label']} | {r['tokens_per_chunk']['mean']:.1f} | {_fmt(u['mse_norm'])} | "
                         f"{curve} |")
    if "bin" in results:
        b = results["bin"]
        lines += ["", "## Bin", "", "Prefixes of whole steps (the rest holds the last decoded action): " + ", ".join(
            f"{p['tokens']} tokens {p['mse_norm']:.3g}" for p in b["prefix"]) + ".",
            f"Analytic bound: bin width w = {b['bin_bound']['bin_width']:.4g}; max |error| on in-range values "
            f"{b['bin_bound']['max_abs_error_in_range']:.4g} (bound w/2 = {b['bin_bound']['half_width']:.4g}); "
            f"MSE {b['bin_bound']['mse_norm_own']:.3g} vs w^2/12 = {b['bin_bound']['uniform_mse']:.3g}; "
            f"{100 * b['bin_bound']['fraction_out_of_range']:.3f}% of held-out values outside the train range, "
            f"{100 * b['bin_bound']['fraction_at_range_limits']:.1f}% exactly at its limits (these sit on the outer "
            "bin edges, |error| = w/2, which lifts the MSE above w^2/12)."]
    if "fast" in results:
        q = results["fast"]["fast_quantization"]
        lines += ["", "## FAST", "",
                  f"Scale {q['scale']:g}: worst chunk MSE {_fmt(q['max_chunk_mse_norm_own'], '.3g')} (mean "
                  f"{_fmt(q['mean_mse_norm_own'], '.3g')}) vs the rounding bound (0.5/scale)^2 = "
                  f"{q['mse_bound_per_chunk']:.3g} (uniform rounding: {q['mse_uniform_rounding']:.3g}); "
                  f"{q['chunks_with_clipped_coefficients']} chunks with coefficients outside the fitted alphabet, "
                  f"{q['chunks_truncated']} truncated at max_tokens={results['fast']['max_tokens']}. Prefixes and most "
                  "random sequences do not map back to H x D_a coefficients: they are invalid (NaN), not zeros."]
    lines += ["", "## Acceptance checks", ""]
    lines += [f"- [{'x' if c['passed'] else ' '}] {c['check']}: {c['detail']}" for c in report["checks"]]
    lines += ["", "## Timing (CPU, ms per chunk; informative only)", "",
              "| tokenizer | tokenize | detokenize |", "|---|---|---|"]
    lines += [f"| {r['label']} | {r['timing_ms_per_chunk']['tokenize']:.3f} | "
              f"{r['timing_ms_per_chunk']['detokenize']:.3f} |" for r in results.values()]
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in report["plots"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    from data_pipelines import EMBEDDED_DATASET_DIR

    p = argparse.ArgumentParser(description="Evaluate action tokenizers (OAT, OAT x, QueST, Bin, FAST).")
    p.add_argument("--dataset", default=EMBEDDED_DATASET_DIR, help="RLDS builder directory (default: embedded)")
    p.add_argument("--unseen", default="auto",
                   help="comma-separated unseen datasets ('label=DIR', 'DIR' or an embedded name) evaluated on every "
                        "episode; 'auto' = the embedded unseen Meta-World tasks when --dataset is the embedded default")
    p.add_argument("--oat", default="", help="OAT training workdir or tokenizer dir")
    p.add_argument("--oatx", default="", help="OAT x training workdir or tokenizer dir")
    p.add_argument("--quest", default="", help="QueST-style training workdir or tokenizer dir")
    p.add_argument("--out", required=True, help="output directory of the report")
    p.add_argument("--horizon", type=int, default=32, help="H when no learned tokenizer is given")
    p.add_argument("--val_fraction", type=float, default=0.1, help="episode split (as in training)")
    p.add_argument("--split_seed", type=int, default=0, help="episode split seed (as in training)")
    p.add_argument("--max_chunks", type=int, default=4096, help="held-out chunks evaluated (evenly spaced; 0 = all)")
    p.add_argument("--num_random", type=int, default=64, help="random sequences per length in test (a)")
    p.add_argument("--seed", type=int, default=0, help="seed of the decodability probes")
    p.add_argument("--bin_bins", type=int, default=256, help="Bin: bins per dimension")
    p.add_argument("--fast_scale", type=float, default=10.0, help="FAST: DCT coefficient scale")
    p.add_argument("--fast_vocab", type=int, default=1024, help="FAST: BPE vocabulary size")
    p.add_argument("--fast_max_tokens", type=int, default=128, help="FAST: longest token sequence")
    p.add_argument("--fast_normalizer", default="limits", help="FAST: 'limits' (as OAT, Bin) or 'quantile'")
    p.add_argument("--skip", default="", help="comma-separated baselines not to fit: bin, fast")
    return p.parse_args(argv)


def _display_path(path: str) -> str:
    """`path` relative to the working directory when it lies inside it (so committed reports hold no host paths)."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def run(args: argparse.Namespace, command: str = "") -> dict:
    """Loads, fits and evaluates every tokenizer; writes the report into args.out; returns the report dict."""
    start = time.perf_counter()
    learned = {}
    for key, label in LEARNED:
        path = getattr(args, key)
        if path:
            try:
                learned[key] = load_action_tokenizer(path)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"--{key}={path}: {e} Train it with python -m experiments.train "
                                        f"--config=experiments/configs/oat.py{'' if key == 'oat' else ':' + key} "
                                        f"--workdir={path}") from e
    shapes = {(t.horizon, t.action_dim) for t in learned.values()}
    if len({h for h, _ in shapes}) > 1 or len({d for _, d in shapes}) > 1:
        raise ValueError(f"The learned tokenizers disagree on (horizon, action_dim): {sorted(shapes)}.")
    horizon = next(iter(shapes))[0] if shapes else args.horizon
    train, val, stats = load_data(args.dataset, horizon, args.val_fraction, args.split_seed, args.max_chunks)
    action_dim = val.shape[-1]
    if shapes and next(iter(shapes))[1] != action_dim:
        raise ValueError(f"The learned tokenizers have action_dim {next(iter(shapes))[1]} but {args.dataset} has "
                         f"{action_dim}-D actions; evaluate them on the dataset they were trained on.")
    common = ActionNormalizer.from_stats(stats["action"], "limits")
    unseen = load_unseen(args.unseen, args.dataset, horizon, args.max_chunks)
    for label, chunks in unseen.items():
        if chunks.shape[-1] != action_dim:
            raise ValueError(f"--unseen dataset '{label}' has {chunks.shape[-1]}-D actions but {args.dataset} has "
                             f"{action_dim}-D ones; give unseen data of the same robot.")
    os.makedirs(args.out, exist_ok=True)
    tokenizers = dict(learned)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    fit_s = {}
    options = {"bin": dict(num_bins=args.bin_bins),
               "fast": dict(scale=args.fast_scale, vocab_size=args.fast_vocab, max_tokens=args.fast_max_tokens,
                            normalizer_mode=args.fast_normalizer)}
    for name in ("bin", "fast"):
        if name not in skip:
            t0 = time.perf_counter()
            tokenizers[name] = fit_action_tokenizer(name, train, **options[name])
            fit_s[name] = time.perf_counter() - t0
            tokenizers[name].save(os.path.join(args.out, "tokenizers", name))
    rng = np.random.default_rng(args.seed)
    results = {}
    for key, tok in tqdm(tokenizers.items(), desc="tokenizers", unit="tok"):
        t0 = time.perf_counter()
        results[key] = evaluate_tokenizer(tok, val, common, rng, args.num_random)
        results[key]["label"] = LABELS[key]
        results[key]["unseen"] = {label: unseen_result(tok, chunks, common) for label, chunks in unseen.items()}
        results[key]["eval_s"] = time.perf_counter() - t0
        if key in fit_s:
            results[key]["fit_s"] = fit_s[key]
        logging.info("%s evaluated in %.1f s", LABELS[key], results[key]["eval_s"])
    report = {"meta": {"dataset": _display_path(args.dataset), "num_val_chunks": int(len(val)),
                       "num_train_chunks": int(len(train)), "horizon": int(horizon), "action_dim": int(action_dim),
                       "val_fraction": args.val_fraction, "split_seed": args.split_seed, "seed": args.seed,
                       "unseen": {label: {"num_chunks": int(len(c))} for label, c in unseen.items()},
                       "workdirs": {k: getattr(args, k) for k, _ in LEARNED if getattr(args, k)},
                       "normalizer_is_identity": bool(np.allclose(common.scale, 1.0, atol=1e-4)
                                                      and np.allclose(common.offset, 0.0, atol=1e-4)),
                       "command": command, "wall_s": 0.0},
              "tokenizers": results, "checks": acceptance_checks(results, horizon, action_dim)}
    report["plots"] = write_plots(results, args.out)
    report["meta"]["wall_s"] = time.perf_counter() - start
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(_json_safe(report), f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown(report))
    return report


def main(argv=None) -> dict:
    """Command-line entry point; returns the report dict."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    command = "python -m experiments.evaluate_tokenizers " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        report = run(args, command)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for c in report["checks"]:
        print(f"[{'PASS' if c['passed'] else 'FAIL'}] {c['check']}: {c['detail']}")
    print(f"Report written to {os.path.join(args.out, 'report.md')}")
    return report


if __name__ == "__main__":
    main()
