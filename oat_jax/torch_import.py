r"""Import tokenizers trained with the reference PyTorch implementation (state-dict layout of the spec, section 7).

  python -m oat_jax.torch_import --input=ckpt.pt --output=DIR [--allow_unsafe_unpickle] [--which=ema_model]
      [--levels=8,5,5,5] [--enc_heads=4] [--dec_heads=4] [--overwrite]

The conversion itself works on a dict name -> numpy array (`convert_state_dict`); PyTorch is needed only to read a
`.pt` file (`read_torch_checkpoint`, `pip install "oat_jax[torch]"`) and is imported only there.

Reference layout -> oat_jax params: Linear weights (out, in) become Dense kernels (in, out); the decoder's
`in_proj_weight` / `in_proj_bias` rows are q, k, v; `multihead_attn` is the cross-attention; `norm{1,2,3}.weight`
are LayerNorm scales; the fixed sin-cos tables are checked against ours (not converted); the normalizer's
`scale`/`offset` are taken as they are (mode 'limits') with `input_stats` kept for reference.
"""

from __future__ import annotations

import argparse
import pickle
import re
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from oat_jax.config import OATConfig
from oat_jax.layers import sincos_table
from oat_jax.normalizer import Normalizer
from oat_jax.tokenizer import OATTokenizer

IGNORED_KEYS = ("_dummy_variable",)
NORMALIZER_PREFIX = "normalizer.params_dict.action."
STATS_KEYS = ("min", "max", "mean", "std")
REFERENCE_HEAD_DIM = 64  # the reference uses 64-wide heads; heads = width // 64 unless given
REFERENCE_LEVELS = (8, 5, 5, 5)  # the reference FSQ levels (latent dim 4)

Transform = Callable[[np.ndarray], np.ndarray]
Layout = dict[str, tuple[tuple[int, ...], list[tuple[str, Transform]]]]


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def _rows(part: int, width: int, transpose: bool) -> Transform:
    """Rows [part*width, (part+1)*width) of a packed q/k/v projection (transposed for weights)."""
    def take(w: np.ndarray) -> np.ndarray:
        block = w[part * width:(part + 1) * width]
        return block.T if transpose else block
    return take


def reference_layout(config: OATConfig) -> Layout:
    """The reference state dict of `config`'s trainable params: key -> (shape, [(oat_jax param path, transform)]).

    Fixed sin-cos tables and normalizer entries are not included (see `fixed_tables`, `NORMALIZER_PREFIX`).
    Only the reference's RegisterEncoder exists there: a config with encoder='conv' raises ValueError.
    """
    if config.encoder != "registers":
        raise ValueError(f"The reference PyTorch checkpoints hold OAT's register encoder only; this config has "
                         f"encoder={config.encoder!r}. Convert with encoder='registers' (the default).")
    c = config
    layout: Layout = {}

    def linear(ref: str, path: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
        layout[f"{ref}.weight"] = ((out_dim, in_dim), [(f"{path}/kernel", _transpose)])
        if bias:
            layout[f"{ref}.bias"] = ((out_dim,), [(f"{path}/bias", _same)])

    E, D, hid = c.enc_width, c.dec_width, c.enc_mlp_hidden
    linear("encoder.sample_emb.patch_proj", "encoder/patch_proj", E, c.action_dim)
    layout["encoder.registers"] = ((c.num_tokens, E), [("encoder/registers", _same)])
    for i in range(c.enc_depth):
        ref, path = f"encoder.transformer.blocks.{i}", f"encoder/block_{i}"
        for name, ours in (("wq", "query"), ("wk", "key"), ("wv", "value"), ("proj", "out")):
            linear(f"{ref}.attn.{name}", f"{path}/attn/{ours}", E, E, bias=False)
        for name, out_dim, in_dim in (("fc1", hid, E), ("fc3", hid, E), ("fc2", E, hid)):
            linear(f"{ref}.mlp.{name}", f"{path}/mlp/{name}", out_dim, in_dim, bias=False)
    linear("encoder.head.proj", "encoder/head", c.latent_dim, E)
    linear("decoder.latent_proj.proj", "decoder/latent_proj", D, c.latent_dim)
    layout["decoder.nested_dropout.dropout_mask_token"] = ((D,), [("decoder/mask_token", _same)])
    for i in range(c.dec_depth):
        ref, path = f"decoder.decoder.layers.{i}", f"decoder/layer_{i}"
        for name, ours in (("self_attn", "self_attn"), ("multihead_attn", "cross_attn")):
            qkv = list(enumerate(("query", "key", "value")))
            layout[f"{ref}.{name}.in_proj_weight"] = (
                (3 * D, D), [(f"{path}/{ours}/{p}/kernel", _rows(j, D, transpose=True)) for j, p in qkv])
            layout[f"{ref}.{name}.in_proj_bias"] = (
                (3 * D,), [(f"{path}/{ours}/{p}/bias", _rows(j, D, transpose=False)) for j, p in qkv])
            linear(f"{ref}.{name}.out_proj", f"{path}/{ours}/out", D, D)
        linear(f"{ref}.linear1", f"{path}/linear1", c.dec_ffn_dim, D)
        linear(f"{ref}.linear2", f"{path}/linear2", D, c.dec_ffn_dim)
        for k in (1, 2, 3):
            layout[f"{ref}.norm{k}.weight"] = ((D,), [(f"{path}/norm{k}/scale", _same)])
            layout[f"{ref}.norm{k}.bias"] = ((D,), [(f"{path}/norm{k}/bias", _same)])
    linear("decoder.head.proj", "decoder/head", c.action_dim, D)
    return layout


def fixed_tables(config: OATConfig) -> dict[str, np.ndarray]:
    """The reference's fixed sin-cos position buffers for `config`, in its (1, E, length) layout."""
    c = config
    return {"encoder.pos_emb.posembs": sincos_table(c.horizon, c.enc_width).T[None],
            "decoder.sample_pos_emb.posembs": sincos_table(c.horizon, c.dec_width).T[None],
            "decoder.latent_pos_emb.posembs": sincos_table(c.num_tokens, c.dec_width).T[None]}


def _normalizer_shapes(config: OATConfig) -> dict[str, tuple[int, ...]]:
    names = ["scale", "offset"] + [f"input_stats.{k}" for k in STATS_KEYS]
    return {NORMALIZER_PREFIX + name: (config.action_dim,) for name in names}


def _select(state_dict: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(f"No key of the state dict starts with prefix {prefix!r}.")
    return {k: np.asarray(v) for k, v in state_dict.items() if k not in IGNORED_KEYS}


def _need(state: Mapping[str, np.ndarray], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"Cannot infer the tokenizer config: the state dict has no {key!r}. Is it a reference OAT "
                         f"tokenizer state dict? Keys present: {sorted(state)[:8]}...")
    shape = np.shape(state[key])
    if len(shape) != ndim:
        raise ValueError(f"{key} has shape {shape}; the reference layout has a {ndim}-D array there.")
    return shape


def _count(state: Mapping[str, np.ndarray], pattern: str) -> int:
    """1 + the largest layer index matched by `pattern` (one group) among the keys."""
    return 1 + max(int(m.group(1)) for m in map(lambda k: re.match(pattern, k), state) if m)


def _mlp_ratio(hidden: int, width: int) -> float:
    """An enc_mlp_ratio r with int(2 * r * width / 3) == hidden (4.0 when it fits, as in the reference)."""
    for ratio in (4.0, (hidden + 0.5) * 1.5 / width):
        if int(2 * ratio * width / 3) == hidden:
            return ratio
    raise ValueError(f"No enc_mlp_ratio gives a SwiGLU hidden size of {hidden} at width {width}.")


def infer_config(state_dict: Mapping[str, Any], prefix: str = "", **overrides: Any) -> OATConfig:
    """Derives an OATConfig from the shapes of a reference state dict.

    Sizes, depths and the MLP width come from the shapes; what shapes cannot tell takes the reference's values
    unless given in `overrides`: heads = width // 64 (`enc_heads`, `dec_heads`), FSQ levels (8, 5, 5, 5) for a
    4-D latent (`levels`), dropout rates and the other switches at OATConfig's defaults.
    """
    state = _select(state_dict, prefix)
    enc_width, action_dim = _need(state, "encoder.sample_emb.patch_proj.weight", 2)
    num_tokens = _need(state, "encoder.registers", 2)[0]
    horizon = _need(state, "encoder.pos_emb.posembs", 3)[2]
    latent_dim = _need(state, "encoder.head.proj.weight", 2)[0]
    dec_width = _need(state, "decoder.latent_proj.proj.weight", 2)[0]
    dec_ffn_dim = _need(state, "decoder.decoder.layers.0.linear1.weight", 2)[0]
    hidden = _need(state, "encoder.transformer.blocks.0.mlp.fc1.weight", 2)[0]
    fields: dict[str, Any] = dict(
        action_dim=action_dim, horizon=horizon, num_tokens=num_tokens, enc_width=enc_width, dec_width=dec_width,
        enc_depth=_count(state, r"encoder\.transformer\.blocks\.(\d+)\."),
        dec_depth=_count(state, r"decoder\.decoder\.layers\.(\d+)\."),
        dec_ffn_dim=dec_ffn_dim, enc_mlp_ratio=_mlp_ratio(hidden, enc_width))
    fields.update(overrides)
    for name, width in (("enc_heads", enc_width), ("dec_heads", dec_width)):
        if name not in fields:
            if width % REFERENCE_HEAD_DIM:
                raise ValueError(f"Cannot infer {name}: width {width} is not a multiple of the reference head size "
                                 f"{REFERENCE_HEAD_DIM}; pass {name}=... explicitly.")
            fields[name] = width // REFERENCE_HEAD_DIM
    if "levels" not in fields:
        if latent_dim != len(REFERENCE_LEVELS):
            raise ValueError(f"Cannot infer the FSQ levels of a {latent_dim}-D latent; pass levels=... (the "
                             f"reference uses {list(REFERENCE_LEVELS)} for 4-D latents).")
        fields["levels"] = REFERENCE_LEVELS
    return OATConfig(**fields)


def convert_state_dict(state_dict: Mapping[str, Any], config: OATConfig | None = None,
                       normalizer: Normalizer | None = None, prefix: str = "",
                       **overrides: Any) -> OATTokenizer:
    """Converts a reference OAT tokenizer state dict (name -> array, the reference PyTorch module names) to an `OATTokenizer`.

    Args:
      state_dict: name -> numpy array (or anything np.asarray accepts) in the reference layout.
      config: the architecture; None = `infer_config(state_dict, prefix, **overrides)`.
      normalizer: None = built from the state dict's `normalizer.params_dict.action.*` entries; given = those
        entries are not needed and ignored.
      prefix: only keys starting with it are read, with it removed (e.g. "tokenizer." inside a policy).
    Raises:
      ValueError naming every missing key, unexpected key and wrong shape; or when the state dict's fixed sin-cos
      tables differ from the ones this implementation computes.
    """
    config = config if config is not None else infer_config(state_dict, prefix, **overrides)
    state = _select(state_dict, prefix)
    layout = reference_layout(config)
    tables = fixed_tables(config)
    expected = {key: shape for key, (shape, _) in layout.items()}
    expected.update({key: table.shape for key, table in tables.items()})
    norm_shapes = _normalizer_shapes(config)
    optional = {k for k in norm_shapes if ".input_stats." in k}
    if normalizer is None:
        expected.update(norm_shapes)
    else:
        state = {k: v for k, v in state.items() if not k.startswith(NORMALIZER_PREFIX)}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {np.shape(state[k])}, expected {expected[k]}" for k in sorted(set(state) & set(expected))
             if tuple(np.shape(state[k])) != tuple(expected[k])]
    if missing or unexpected or wrong:
        parts = [f"missing keys {missing}" if missing else "", f"unexpected keys {unexpected}" if unexpected else "",
                 f"wrong shapes [{'; '.join(wrong)}]" if wrong else ""]
        raise ValueError(f"The state dict does not match the reference OAT tokenizer layout of the config "
                         f"(E={config.enc_width}/{config.dec_width}, depth={config.enc_depth}/{config.dec_depth}, "
                         f"H={config.horizon}, N={config.num_tokens}, D_a={config.action_dim}): "
                         f"{', '.join(p for p in parts if p)}. Pass the tokenizer's own state dict "
                         f"(payload['state_dicts']['ema_model']) and the config it was trained with.")
    for key, table in tables.items():
        if not np.allclose(np.asarray(state[key], np.float32), table, atol=1e-4):
            raise ValueError(f"{key} differs from the fixed sin-cos table this implementation computes (max "
                             f"difference {np.abs(np.asarray(state[key], np.float32) - table).max():.3g}); the "
                             f"checkpoint uses another position encoding and cannot be converted faithfully.")
    params: dict = {}
    for key, (_, targets) in layout.items():
        value = np.asarray(state[key], np.float32)
        for path, transform in targets:
            node = params
            *parents, leaf = path.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = jnp.asarray(np.ascontiguousarray(transform(value)))
    if normalizer is None:
        stats = {k: state[f"{NORMALIZER_PREFIX}input_stats.{k}"] for k in STATS_KEYS
                 if f"{NORMALIZER_PREFIX}input_stats.{k}" in state}
        normalizer = Normalizer("limits", state[NORMALIZER_PREFIX + "scale"],
                                      state[NORMALIZER_PREFIX + "offset"], stats)
    return OATTokenizer(config, params, normalizer)


def select_state_dict(payload: Any, which: str | None = None) -> Mapping[str, Any]:
    """The tokenizer state dict inside a loaded checkpoint payload.

    Args:
      payload: a bare state dict (name -> tensor), or the reference's {'state_dicts': {'ema_model', 'model', ...}}.
      which: the entry of `state_dicts` to use; None = 'ema_model' if present, else 'model'.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"Expected a state dict or a reference payload dict, got {type(payload).__name__}.")
    if "state_dicts" in payload:
        entries = payload["state_dicts"]
        choice = which or next((k for k in ("ema_model", "model") if k in entries), None)
        if choice not in entries:
            raise ValueError(f"The payload's state_dicts hold {sorted(entries)}; no {which or 'ema_model/model'!r}.")
        return entries[choice]
    if which is not None:
        raise ValueError(f"which={which!r} given but the file holds a bare state dict (no 'state_dicts').")
    if not all(hasattr(v, "shape") for v in payload.values()):
        raise ValueError(f"The file holds a dict with keys {sorted(payload)[:10]} that is neither a state dict nor a "
                         f"reference payload with 'state_dicts'.")
    return payload


UNSAFE_UNPICKLE_HELP = (
    "Reference checkpoints are full training payloads pickled with dill (config objects, optimizer state); "
    "torch.load(weights_only=True) refuses such objects because unpickling them can run arbitrary code. If you "
    "trust the file (e.g. you trained it), pass --allow_unsafe_unpickle (allow_unsafe_unpickle=True); or, in "
    "PyTorch, save only the tensors once: torch.save(payload['state_dicts']['ema_model'], 'ema.pt') and convert "
    "that file.")


def read_torch_checkpoint(path: str, allow_unsafe_unpickle: bool = False,
                          which: str | None = None) -> dict[str, np.ndarray]:
    """Reads the tokenizer state dict of a reference `.pt` file as name -> float32 numpy arrays (needs PyTorch).

    Args:
      path: a bare state dict saved with torch.save, or the reference payload (`state_dicts[which]` is used).
      allow_unsafe_unpickle: unpickle a full payload (arbitrary code can run: only for trusted files); the
        default reads tensors only (`weights_only=True`).
      which: see `select_state_dict`.
    """
    try:
        import torch  # optional dependency, only for reading .pt files
    except ImportError as e:
        raise ImportError('Reading PyTorch checkpoints needs torch: pip install "oat_jax[torch]". Or convert a dict '
                          'of numpy arrays with oat_jax.torch_import.convert_state_dict.') from e
    if allow_unsafe_unpickle:
        try:
            import dill as pickle_module  # the reference pickles its payload with dill
        except ImportError:
            pickle_module = pickle
        payload = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            reason = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0])  # torch colours its message
            raise ValueError(f"{path}: {UNSAFE_UNPICKLE_HELP}\n(torch said: {reason})") from e
    state = select_state_dict(payload, which)
    return {k: v.detach().to("cpu", torch.float32).numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            for k, v in state.items() if hasattr(v, "shape")}


def convert_checkpoint(input_path: str, output: str, allow_unsafe_unpickle: bool = False, which: str | None = None,
                       overwrite: bool = False, **overrides: Any) -> str:
    """Reads a reference `.pt` checkpoint, converts it and saves an oat_jax tokenizer directory; returns its path.

    `overrides` are OATConfig fields shapes cannot tell (levels, enc_heads, dec_heads, ...), see `infer_config`.
    """
    state = read_torch_checkpoint(input_path, allow_unsafe_unpickle, which)
    return convert_state_dict(state, **overrides).save(output, overwrite=overwrite)


def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Convert a reference PyTorch OAT tokenizer to an oat_jax one.")
    parser.add_argument("--input", required=True, help="reference .pt file (payload or bare state dict)")
    parser.add_argument("--output", required=True, help="tokenizer directory to write")
    parser.add_argument("--allow_unsafe_unpickle", action="store_true",
                        help="unpickle a full dill payload (runs code from the file: only for files you trust)")
    parser.add_argument("--which", default=None, help="state_dicts entry: ema_model (default if present) or model")
    parser.add_argument("--levels", default=None, help="FSQ levels, e.g. 8,5,5,5 (default: the reference's)")
    parser.add_argument("--enc_heads", type=int, default=None, help="encoder heads (default width // 64)")
    parser.add_argument("--dec_heads", type=int, default=None, help="decoder heads (default width // 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("enc_heads", args.enc_heads), ("dec_heads", args.dec_heads)) if v is not None}
    if args.levels:
        overrides["levels"] = tuple(int(v) for v in args.levels.split(","))
    try:
        print(convert_checkpoint(args.input, args.output, args.allow_unsafe_unpickle, args.which, args.overwrite,
                                 **overrides))
    except (ValueError, FileExistsError, ImportError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
