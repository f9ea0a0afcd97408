"""Rendering of the tokenizer evaluation report (`oat_jax.eval.tokenizer_report`): plots, Markdown and JSON.

The report dict: {"meta": {...}, "tokenizers": {key: `evaluate_all` result (+ "fit_s")}, "checks":
`acceptance_checks`, "plots": file names}. matplotlib is imported only when plots are written.
"""

from __future__ import annotations

import json
import os

import numpy as np

from oat_jax.eval.tokenizer_report import fmt, json_safe

PLOT_DPI = 90


def _save(fig, out: str, name: str, names: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=PLOT_DPI)
    plt.close(fig)
    names.append(name)


def write_plots(results: dict, out: str) -> list[str]:
    """Writes rate_distortion.png (tokens per chunk vs normalized MSE on held-out and every unseen set),
    decodability.png and token_entropy.png into the existing directory `out`; returns the file names.

    Args:
      results: {key: `evaluate_all` result}, at least one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    panels = [("held-out episodes", lambda r: r)]
    panels += [(f"unseen: {label}", lambda r, label=label: r["unseen"][label])
               for label in next(iter(results.values())).get("unseen", {})]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    for ax, (title, pick) in zip(axes[0], panels):
        for r in results.values():
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
    _save(fig, out, "rate_distortion.png", names)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    tests = ("random", "replace_one", "truncate")
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results.values()):
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
    _save(fig, out, "decodability.png", names)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in results.values():
        ent = r["token_stats"]["entropy_bits"]
        label = f"{r['label']} (max {r['token_stats']['max_entropy_bits']:.1f})"
        ax.plot(np.arange(1, len(ent) + 1), ent, ".-", ms=3, label=label)
    ax.set(xscale="log", xlabel="token position", ylabel="entropy (bits)", title="Per-position token entropy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out, "token_entropy.png", names)
    return names


def _header(meta: dict) -> list[str]:
    identity = (" (here the identity: every action dimension spans [-1, 1], so raw and normalized MSE coincide)."
                if meta.get("normalizer_is_identity") else ".")
    return ["# Tokenizer evaluation report", "",
            f"Dataset `{meta['dataset']}`: {meta['num_val_chunks']} held-out chunks (validation episodes, "
            f"val_fraction {meta['val_fraction']}, split_seed {meta['split_seed']}), H = {meta['horizon']}, "
            f"D_a = {meta['action_dim']}; Bin and FAST fitted on {meta['num_train_chunks']} train chunks. "
            "Normalized MSE is in one shared space (train-split min/max -> [-1, 1])" + identity, "",
            f"Command: `{meta['command']}` ({meta['wall_s']:.0f} s)", ""]


def _summary(results: dict) -> list[str]:
    lines = ["## Summary", "",
             "| tokenizer | tokens/chunk (mean / max) | vocab | MSE norm | MSE raw | variance explained | "
             "decodable: random / one replaced / truncated | mean entropy (bits) | codebook usage |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        d, t = r["decodability"], r["token_stats"]
        lines.append(f"| {r['label']} | {r['tokens_per_chunk']['mean']:.1f} / {r['tokens_per_chunk']['max']} | "
                     f"{r['vocab_size']} | {fmt(r['mse_norm'])} | {fmt(r['mse_raw'])} | "
                     f"{fmt(r['variance_explained'], '.4f')} | {d['random']:.3f} / {d['replace_one']:.3f} / "
                     f"{fmt(d['truncate'], '.3f')} | {t['mean_entropy_bits']:.2f} | {t['usage_total']:.3f} |")
    return lines


def _oat_family(results: dict) -> list[str]:
    family = [r for r in results.values() if r["type"] == "oat"]
    if not family:
        return []
    lines = ["", "## Prefix reconstruction (OAT family): MSE normalized (variance explained)", "",
             "| k | " + " | ".join(r["label"] for r in family) + " |", "|---|" + "---|" * len(family)]
    for i in range(max(len(r["prefix"]) for r in family)):
        row = [f"{r['prefix'][i]['mse_norm']:.4g} ({r['prefix'][i]['variance_explained']:.3f})"
               if i < len(r["prefix"]) else "" for r in family]
        lines.append(f"| {i + 1} | " + " | ".join(row) + " |")
    lines += ["", "Raw-unit MSE per k: " + "; ".join(
        f"{r['label']}: " + ", ".join(f"{p['mse_raw']:.3g}" for p in r["prefix"]) for r in family) + ".",
              "OAT x and QueST-style were trained with all N tokens only (no nested dropout): their prefixes "
              "decode mechanically (dropped positions take the mask vector) but were never a training target, "
              "which their k < N errors reflect."]
    return lines


def _unseen(results: dict, meta: dict) -> list[str]:
    lines = []
    for label, info in meta.get("unseen", {}).items():
        lines += ["", f"## Unseen data '{label}' ({info['num_chunks']} chunks, every episode; no tokenizer trained "
                  "on it): MSE normalized", "",
                  "| tokenizer | tokens/chunk | MSE at full length | MSE per prefix length (tokens: MSE) |",
                  "|---|---|---|---|"]
        for r in results.values():
            u = r["unseen"][label]
            curve = ", ".join(f"{p['tokens']}: {p['mse_norm']:.3g}" for p in u["prefix"]) or "prefixes do not decode"
            lines.append(f"| {r['label']} | {r['tokens_per_chunk']['mean']:.1f} | {fmt(u['mse_norm'])} | {curve} |")
    return lines


def _diagnostics(results: dict) -> list[str]:
    """A section per tokenizer whose `diagnostics` gave a known section ("bin_bound", "fast_quantization")."""
    lines = []
    for r in results.values():
        if "bin_bound" in r:
            b = r["bin_bound"]
            lines += ["", f"## {r['label']}", "", "Prefixes of whole steps (the rest holds the last decoded action): "
                      + ", ".join(f"{p['tokens']} tokens {p['mse_norm']:.3g}" for p in r["prefix"]) + ".",
                      f"Analytic bound: bin width w = {b['bin_width']:.4g}; max |error| on in-range values "
                      f"{b['max_abs_error_in_range']:.4g} (bound w/2 = {b['half_width']:.4g}); "
                      f"MSE {b['mse_norm_own']:.3g} vs w^2/12 = {b['uniform_mse']:.3g}; "
                      f"{100 * b['fraction_out_of_range']:.3f}% of held-out values outside the train range, "
                      f"{100 * b['fraction_at_range_limits']:.1f}% exactly at its limits (these sit on the outer "
                      "bin edges, |error| = w/2, which lifts the MSE above w^2/12)."]
        if "fast_quantization" in r:
            q = r["fast_quantization"]
            lines += ["", f"## {r['label']}", "",
                      f"Scale {q['scale']:g}: worst chunk MSE {fmt(q['max_chunk_mse_norm_own'], '.3g')} (mean "
                      f"{fmt(q['mean_mse_norm_own'], '.3g')}) vs the rounding bound (0.5/scale)^2 = "
                      f"{q['mse_bound_per_chunk']:.3g} (uniform rounding: {q['mse_uniform_rounding']:.3g}); "
                      f"{q['chunks_with_clipped_coefficients']} chunks with coefficients outside the fitted "
                      f"alphabet, {q['chunks_truncated']} truncated at max_tokens={r['max_tokens']}. Prefixes and "
                      "most random sequences do not map back to H x D_a coefficients: they are invalid (NaN), not "
                      "zeros."]
    return lines


def markdown(report: dict) -> str:
    """The human-readable report (report.md) of a report dict (module docstring)."""
    results, meta = report["tokenizers"], report["meta"]
    lines = _header(meta) + _summary(results) + _oat_family(results) + _unseen(results, meta)
    lines += _diagnostics(results)
    lines += ["", "## Acceptance checks", ""]
    lines += [f"- [{'x' if c['passed'] else ' '}] {c['check']}: {c['detail']}" for c in report["checks"]]
    lines += ["", "## Timing (CPU, ms per chunk; informative only)", "",
              "| tokenizer | tokenize | detokenize |", "|---|---|---|"]
    lines += [f"| {r['label']} | {r['timing_ms_per_chunk']['tokenize']:.3f} | "
              f"{r['timing_ms_per_chunk']['detokenize']:.3f} |" for r in results.values()]
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in report.get("plots", [])]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str) -> None:
    """Writes `out`/report.json (strict JSON: NaN as null) and `out`/report.md of a report dict."""
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(json_safe(report), f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown(report))
