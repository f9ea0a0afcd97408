"""Import of reference (PyTorch) tokenizer state dicts: a random state dict in the spec's layout (section 7) is
converted and the converted tokenizer must reproduce an independent numpy forward pass of the same weights."""

import argparse
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from oat_jax import OATConfig, OATTokenizer, param_count
from oat_jax import torch_import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small reference-style sizes: D_a=3, H=8, N=4, E=32 (2 heads of 16), 2 encoder blocks, 2 decoder layers.
SIZES = dict(action_dim=3, horizon=8, num_tokens=4, enc_width=32, dec_width=32, enc_depth=2, dec_depth=2,
             dec_ffn_dim=48, levels=(5, 4, 3))
HEADS = dict(enc_heads=2, dec_heads=2)
EPS = 1e-5


def spec_posemb(length, width):
    """The spec's fixed table in the reference layout (1, width, length): sin half then cos half."""
    omega = 10000.0 ** (-np.arange(width // 2) / (width / 2))
    angles = np.arange(length)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], -1).T[None].astype(np.float32)


def reference_state_dict(s, seed=0):
    """Random reference-layout state dict for sizes `s` (names and shapes as listed in the spec, section 7)."""
    rng = np.random.default_rng(seed)
    E, D, da, H, N, d = s["enc_width"], s["dec_width"], s["action_dim"], s["horizon"], s["num_tokens"], len(s["levels"])
    hid, ffn = int(2 * 4.0 * E / 3), s["dec_ffn_dim"]
    w = lambda o, i: rng.normal(0, i ** -0.5, (o, i))  # noqa: E731
    b = lambda o: rng.normal(0, 0.3, (o,))  # noqa: E731
    sd = {"encoder.sample_emb.patch_proj.weight": w(E, da), "encoder.sample_emb.patch_proj.bias": b(E),
          "encoder.pos_emb.posembs": spec_posemb(H, E), "encoder.registers": rng.normal(0, 1, (N, E)),
          "encoder.head.proj.weight": w(d, E) * 3, "encoder.head.proj.bias": b(d),
          "decoder.sample_pos_emb.posembs": spec_posemb(H, D), "decoder.latent_pos_emb.posembs": spec_posemb(N, D),
          "decoder.nested_dropout.dropout_mask_token": rng.normal(0, 1, (D,)),
          "decoder.latent_proj.proj.weight": w(D, d), "decoder.latent_proj.proj.bias": b(D),
          "decoder.head.proj.weight": w(da, D), "decoder.head.proj.bias": b(da),
          "_dummy_variable": np.zeros((0,))}
    for i in range(s["enc_depth"]):
        p = f"encoder.transformer.blocks.{i}."
        sd.update({p + f"attn.{n}.weight": w(E, E) for n in ("wq", "wk", "wv", "proj")})
        sd.update({p + "mlp.fc1.weight": w(hid, E), p + "mlp.fc3.weight": w(hid, E), p + "mlp.fc2.weight": w(E, hid)})
    for i in range(s["dec_depth"]):
        p = f"decoder.decoder.layers.{i}."
        for a in ("self_attn", "multihead_attn"):
            sd.update({p + f"{a}.in_proj_weight": w(3 * D, D), p + f"{a}.in_proj_bias": b(3 * D),
                       p + f"{a}.out_proj.weight": w(D, D), p + f"{a}.out_proj.bias": b(D)})
        sd.update({p + "linear1.weight": w(ffn, D), p + "linear1.bias": b(ffn), p + "linear2.weight": w(D, ffn),
                   p + "linear2.bias": b(D)})
        for k in (1, 2, 3):
            sd.update({p + f"norm{k}.weight": 1 + rng.normal(0, 0.2, (D,)), p + f"norm{k}.bias": b(D)})
    lo = rng.uniform(-2, -0.5, da)
    hi = lo + rng.uniform(0.5, 3, da)
    scale = 2 / (hi - lo)
    sd.update({"normalizer.params_dict.action.scale": scale, "normalizer.params_dict.action.offset": -1 - scale * lo,
               "normalizer.params_dict.action.input_stats.min": lo, "normalizer.params_dict.action.input_stats.max": hi,
               "normalizer.params_dict.action.input_stats.mean": (lo + hi) / 2,
               "normalizer.params_dict.action.input_stats.std": (hi - lo) / 4})
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


# ----------------------------- independent numpy forward (float64) -----------------------------
def ln(x, w=None, b=None):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + EPS)
    return y if w is None else y * w + b


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def heads(x, n):
    return x.reshape(x.shape[0], n, -1).transpose(1, 0, 2)  # (T, E) -> (n, T, hd)


def attend(q, k, v, n, mask=None):
    q, k, v = heads(q, n), heads(k, n), heads(v, n)
    logits = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    return (softmax(logits) @ v).transpose(1, 0, 2).reshape(q.shape[1], -1)


def np_encode(sd, s, x):
    """One raw chunk (H, D_a) -> pre-quantization latents (N, d)."""
    g = lambda k: sd[k].astype(np.float64)  # noqa: E731
    H, N = s["horizon"], s["num_tokens"]
    xn = x * g("normalizer.params_dict.action.scale") + g("normalizer.params_dict.action.offset")
    h = xn @ g("encoder.sample_emb.patch_proj.weight").T + g("encoder.sample_emb.patch_proj.bias")
    h = np.concatenate([h + g("encoder.pos_emb.posembs")[0].T, g("encoder.registers")])
    mask = np.zeros((H + N, H + N), bool)
    mask[:, :H] = True
    mask[H:, H:] = np.tril(np.ones((N, N), bool))
    for i in range(s["enc_depth"]):
        p = f"encoder.transformer.blocks.{i}."
        y = ln(h)
        q, k, v = (y @ g(p + f"attn.{n}.weight").T for n in ("wq", "wk", "wv"))
        hd = s["enc_width"] // HEADS["enc_heads"]
        qk_norm = lambda t: ln(t.reshape(t.shape[0], -1, hd)).reshape(t.shape)  # noqa: E731
        h = h + attend(qk_norm(q), qk_norm(k), v, HEADS["enc_heads"], mask) @ g(p + "attn.proj.weight").T
        y = ln(h)
        a = y @ g(p + "mlp.fc1.weight").T
        h = h + ((a / (1 + np.exp(-a))) * (y @ g(p + "mlp.fc3.weight").T)) @ g(p + "mlp.fc2.weight").T
    return ln(h[H:]) @ g("encoder.head.proj.weight").T + g("encoder.head.proj.bias")


def np_fsq(z, levels):
    """latents (N, d) -> (bounded values before rounding, token ids (N,))."""
    L = np.asarray(levels, np.float64)
    half = (L - 1) * (1 + 1e-3) / 2
    offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0)
    bounded = np.tanh(z + np.arctanh(offset / half)) * half - offset
    digits = np.round(bounded) + np.asarray(levels) // 2
    basis = np.cumprod([1] + list(levels[:-1]))
    return bounded, (digits * basis).sum(-1).astype(np.int64)


def np_decode(sd, s, tokens, k):
    """Token ids (N,) with the first k kept -> raw actions (H, D_a)."""
    g = lambda key: sd[key].astype(np.float64)  # noqa: E731
    levels, n, H = s["levels"], HEADS["dec_heads"], s["horizon"]
    digits = (tokens[:, None] // np.cumprod([1] + list(levels[:-1]))) % np.asarray(levels)
    codes = (digits - np.asarray(levels) // 2) / (np.asarray(levels) // 2)
    mem = codes @ g("decoder.latent_proj.proj.weight").T + g("decoder.latent_proj.proj.bias")
    mem = mem + g("decoder.latent_pos_emb.posembs")[0].T
    mem[k:] = g("decoder.nested_dropout.dropout_mask_token")
    x = g("decoder.sample_pos_emb.posembs")[0].T
    D = s["dec_width"]

    def mha(prefix, xq, xkv, mask=None):
        w, b = g(prefix + "in_proj_weight"), g(prefix + "in_proj_bias")
        q, kk, v = xq @ w[:D].T + b[:D], xkv @ w[D:2 * D].T + b[D:2 * D], xkv @ w[2 * D:].T + b[2 * D:]
        return attend(q, kk, v, n, mask) @ g(prefix + "out_proj.weight").T + g(prefix + "out_proj.bias")

    erf = np.vectorize(math.erf)
    for i in range(s["dec_depth"]):
        p = f"decoder.decoder.layers.{i}."
        norm = lambda t, j: ln(t, g(p + f"norm{j}.weight"), g(p + f"norm{j}.bias"))  # noqa: E731
        x = x + mha(p + "self_attn.", norm(x, 1), norm(x, 1), np.tril(np.ones((H, H), bool)))
        x = x + mha(p + "multihead_attn.", norm(x, 2), mem)
        a = norm(x, 3) @ g(p + "linear1.weight").T + g(p + "linear1.bias")
        x = x + (0.5 * a * (1 + erf(a / math.sqrt(2)))) @ g(p + "linear2.weight").T + g(p + "linear2.bias")
    y = ln(x) @ g("decoder.head.proj.weight").T + g("decoder.head.proj.bias")
    return (y - g("normalizer.params_dict.action.offset")) / g("normalizer.params_dict.action.scale")


@pytest.fixture(scope="module")
def converted():
    sd = reference_state_dict(SIZES)
    tok = torch_import.convert_state_dict(sd, levels=SIZES["levels"], **HEADS)
    return sd, tok


def test_inferred_config_matches_the_sizes(converted):
    _, tok = converted
    assert tok.config == OATConfig(**SIZES, **HEADS)
    assert tok.normalizer.mode == "limits"


def test_converted_tokenizer_reproduces_numpy_reference_forward(converted):
    sd, tok = converted
    rng = np.random.default_rng(1)
    lo, hi = sd["normalizer.params_dict.action.input_stats.min"], sd["normalizer.params_dict.action.input_stats.max"]
    actions = rng.uniform(lo, hi, (6, SIZES["horizon"], SIZES["action_dim"])).astype(np.float32)
    latents = np.asarray(tok.encode(actions, quantize=False))
    tokens, token_lengths = tok.tokenize(actions)
    np.testing.assert_array_equal(token_lengths, [SIZES["num_tokens"]] * len(actions))
    assert len(np.unique(tokens)) > 3  # the weights give non-trivial tokens
    for b in range(len(actions)):
        ref_latents = np_encode(sd, SIZES, actions[b].astype(np.float64))
        np.testing.assert_allclose(latents[b], ref_latents, atol=2e-4, rtol=1e-4)
        bounded, ref_tokens = np_fsq(ref_latents, SIZES["levels"])
        near_boundary = np.any(np.abs(np.abs(bounded - np.floor(bounded)) - 0.5) < 1e-3, axis=-1)
        assert np.all((tokens[b] == ref_tokens) | near_boundary)
    lengths = np.array([1, 2, 3, 4, 4, 1])
    decoded, valid = tok.detokenize(tokens, lengths)
    assert valid.all()
    for b in range(len(actions)):
        ref = np_decode(sd, SIZES, tokens[b], lengths[b])
        np.testing.assert_allclose(decoded[b], ref, atol=2e-4, rtol=1e-4)
        if lengths[b] < SIZES["num_tokens"]:  # the prefix matters: the full chunk decodes differently
            assert not np.allclose(decoded[b], np_decode(sd, SIZES, tokens[b], SIZES["num_tokens"]), atol=1e-3)


def test_paper_sized_state_dict_gives_the_default_config_and_parameter_count():
    s = dict(action_dim=7, horizon=32, num_tokens=8, enc_width=256, dec_width=256, enc_depth=2, dec_depth=4,
             dec_ffn_dim=1024, levels=(8, 5, 5, 5))
    sd = reference_state_dict(s)
    trainable = [k for k in sd if "posembs" not in k and not k.startswith("normalizer.") and k != "_dummy_variable"]
    assert sum(sd[k].size for k in trainable) == 5_794_059
    tok = torch_import.convert_state_dict(sd)  # heads, levels, MLP ratio inferred as the reference's
    assert tok.config == OATConfig(action_dim=7)
    assert param_count(tok.params) == 5_794_059


def test_missing_unexpected_and_misshaped_keys_are_named():
    sd = reference_state_dict(SIZES)
    del sd["decoder.decoder.layers.1.norm2.bias"], sd["encoder.transformer.blocks.0.mlp.fc3.weight"]
    sd["decoder.extra.weight"] = np.zeros(3, np.float32)
    sd["decoder.head.proj.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError) as info:
        torch_import.convert_state_dict(sd, levels=SIZES["levels"], **HEADS)
    message = str(info.value)
    for name in ("decoder.decoder.layers.1.norm2.bias", "encoder.transformer.blocks.0.mlp.fc3.weight",
                 "decoder.extra.weight", "decoder.head.proj.bias: (5,), expected (3,)"):
        assert name in message
    with pytest.raises(ValueError, match="normalizer.params_dict.action.scale"):
        torch_import.convert_state_dict({k: v for k, v in reference_state_dict(SIZES).items()
                                         if not k.endswith(".scale")}, levels=SIZES["levels"], **HEADS)
    with pytest.raises(ValueError, match="encoder.registers"):  # cannot even infer the config
        torch_import.convert_state_dict({"encoder.sample_emb.patch_proj.weight": np.zeros((32, 3))})
    with pytest.raises(ValueError, match="enc_heads"):  # width 32 is not a multiple of the reference head size
        torch_import.convert_state_dict(reference_state_dict(SIZES), levels=SIZES["levels"])


def test_foreign_position_table_is_rejected():
    sd = reference_state_dict(SIZES)
    sd["decoder.latent_pos_emb.posembs"] = np.random.default_rng(0).normal(size=(1, 32, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="decoder.latent_pos_emb.posembs differs"):
        torch_import.convert_state_dict(sd, levels=SIZES["levels"], **HEADS)


def test_prefix_and_explicit_normalizer(converted):
    sd, tok = converted
    nested = {"tokenizer." + k: v for k, v in sd.items() if not k.startswith("normalizer.")}
    nested["policy.head.weight"] = np.zeros((2, 2), np.float32)
    other = torch_import.convert_state_dict(nested, prefix="tokenizer.", normalizer=tok.normalizer,
                                            levels=SIZES["levels"], **HEADS)
    tokens = np.array([[1, 5, 7, 9]])
    actions, valid = tok.detokenize(tokens)
    assert valid.all()
    np.testing.assert_array_equal(other.detokenize(tokens)[0], actions)


def test_select_state_dict_payload_forms():
    sd = {"a": np.zeros(2)}
    ema, raw = {"a": np.ones(2)}, {"a": np.zeros(2)}
    assert torch_import.select_state_dict(sd) is sd
    assert torch_import.select_state_dict({"state_dicts": {"model": raw, "ema_model": ema}}) is ema
    assert torch_import.select_state_dict({"state_dicts": {"model": raw, "ema_model": ema}}, "model") is raw
    assert torch_import.select_state_dict({"state_dicts": {"model": raw}}) is raw
    with pytest.raises(ValueError, match="optimizer"):
        torch_import.select_state_dict({"state_dicts": {"optimizer": {}}})
    with pytest.raises(ValueError, match="neither a state dict"):
        torch_import.select_state_dict({"cfg": "x", "epoch": 3})


def test_torch_file_cli_round_trip(tmp_path, converted):
    """Needs PyTorch (not installed in CI): a bare state dict file converts; a pickled payload with a non-tensor
    config is refused without the trust flag and converts with it."""
    torch = pytest.importorskip("torch")
    sd, tok = converted
    tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
    bare = tmp_path / "bare.pt"
    torch.save(tensors, bare)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    run = lambda *args: subprocess.run([sys.executable, "-m", "oat_jax.torch_import", *args],  # noqa: E731
                                       capture_output=True, text=True, env=env, timeout=120)
    flags = ["--levels=5,4,3", "--enc_heads=2", "--dec_heads=2"]
    result = run(f"--input={bare}", f"--output={tmp_path / 'bare_tok'}", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    tokens = np.array([[3, 1, 4, 1], [5, 9, 2, 6]])
    expected, valid = tok.detokenize(tokens)
    assert valid.all()
    np.testing.assert_allclose(OATTokenizer.load(str(tmp_path / "bare_tok")).detokenize(tokens)[0], expected,
                               atol=1e-6)

    payload = tmp_path / "payload.pt"
    # A non-tensor config object, like the reference's pickled config: weights_only=True refuses it.
    try:
        import dill as pickle_module  # the reference pickles its payload with dill
    except ImportError:
        import pickle as pickle_module
    torch.save({"cfg": argparse.Namespace(horizon=8), "state_dicts": {"model": {}, "ema_model": tensors}}, payload,
               pickle_module=pickle_module)
    refused = run(f"--input={payload}", f"--output={tmp_path / 'p_tok'}", *flags)
    assert refused.returncode != 0 and "--allow_unsafe_unpickle" in refused.stderr
    assert not (tmp_path / "p_tok").exists()
    accepted = run(f"--input={payload}", f"--output={tmp_path / 'p_tok'}", "--allow_unsafe_unpickle", *flags)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    np.testing.assert_allclose(OATTokenizer.load(str(tmp_path / "p_tok")).detokenize(tokens)[0], expected,
                               atol=1e-6)
