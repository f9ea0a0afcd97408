"""The QueST-style ConvEncoder (OATConfig.encoder='conv'): shapes, causality, config validation, torch import."""

import jax
import numpy as np
import pytest

from oat_jax import OATConfig, OATTokenizer
from oat_jax.encoder import conv_stages
from oat_jax.model import OATModel, abstract_params
from oat_jax.torch_import import reference_layout
from test_tok_oat import random_params

CONV = OATConfig(action_dim=3, horizon=16, num_tokens=4, levels=(4, 3, 3), enc_width=32, enc_depth=2, enc_heads=2,
                 dec_width=32, dec_depth=1, dec_heads=2, dec_ffn_dim=64, enc_dropout=0.0, dec_dropout=0.0,
                 dec_attn_dropout=0.0, encoder="conv")


def test_param_tree_and_shapes():
    params = abstract_params(CONV)
    enc = params["encoder"]
    assert conv_stages(16, 4) == 2 and sorted(k for k in enc if k.startswith("conv_")) == ["conv_0", "conv_1"]
    assert enc["conv_0"]["kernel"].shape == (4, 32, 32) and "registers" not in enc
    assert set(params["decoder"]) == set(abstract_params(CONV.replace(encoder="registers"))["decoder"])
    assert "conv_0" not in abstract_params(CONV.replace(encoder="registers"))["encoder"]
    tok = OATTokenizer(CONV, random_params(CONV))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 3)).astype(np.float32)
    assert tok.encode(x, quantize=False).shape == (2, 4, 3)
    tokens, _ = tok.tokenize(x)
    assert tokens.shape == (2, 4) and tok.detokenize(tokens, 2)[0].shape == (2, 16, 3)


def test_token_j_depends_only_on_actions_up_to_the_end_of_its_block():
    """Causal convs + causal attention: latent j sees action steps < (j + 1) * H/N only (H/N = 4 here)."""
    model = OATModel(CONV)
    params = random_params(CONV, seed=1)
    encode = jax.jit(lambda x: model.apply({"params": params}, x, method=OATModel.encode))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 16, 3)).astype(np.float32)
    batch = np.repeat(x, 17, axis=0)
    batch[np.arange(1, 17), np.arange(16)] += 0.5  # row t + 1: action step t changed; row 0 unchanged
    latents = np.asarray(encode(batch))
    for t in range(16):
        diff = np.abs(latents[t + 1] - latents[0]).max(axis=-1)  # (N,)
        first = t // 4
        np.testing.assert_allclose(diff[:first], 0.0, atol=1e-5, err_msg=f"step {t} changed an earlier latent")
        assert diff[first] > 1e-2, f"step {t} does not reach latent {first} (its own block)"


def test_config_validation_and_torch_import_refusal():
    with pytest.raises(ValueError, match="horizon"):
        OATConfig(horizon=24, num_tokens=8, encoder="conv")
    with pytest.raises(ValueError, match="encoder"):
        OATConfig(encoder="vq")
    assert OATConfig(horizon=8, num_tokens=8, encoder="conv").encoder == "conv"  # no downsampling stage
    assert OATConfig.from_dict(CONV.to_dict()) == CONV
    legacy = CONV.replace(encoder="registers").to_dict()
    del legacy["encoder"]  # configs saved before the field existed load as the register encoder
    assert OATConfig.from_dict(legacy).encoder == "registers"
    with pytest.raises(ValueError, match="encoder='registers'"):
        reference_layout(CONV)


def test_default_orders_tokens_over_the_conv_encoder_and_variants_change_one_thing():
    from experiments.configs import oat as oat_configs

    base, quest, oatx = (oat_configs.get_config(v) for v in ("", "quest", "oatx"))
    # The default: ordered tokens (nested dropout) over the causal conv encoder on single steps.
    assert (base.model.encoder, base.model.enc_patch) == ("conv", 1) and base.objective.nested_dropout == "power"
    # QueST-style: the same model, unordered tokens; without nested dropout every decode is full-length.
    assert quest.model.to_dict() == base.model.to_dict()
    assert quest.objective.nested_dropout == "none" and quest.objective.detach_tokens == 0
    # OAT x: the paper's register encoder (2-step input patches at the default's size), unordered.
    assert {k for k in base.model if base.model[k] != oatx.model[k]} == {"encoder", "enc_patch"}
    assert (oatx.model.encoder, oatx.model.enc_patch) == ("registers", 2)
    assert oatx.objective.to_dict() == quest.objective.to_dict()
    for variant in (quest, oatx):
        for section in ("optim", "train", "data", "ema", "augment"):  # the same training recipe and budget
            assert variant[section].to_dict() == base[section].to_dict(), section
    paper = oat_configs.get_config("paper")  # the reference: register encoder, pow2 nested dropout, bf16
    assert (paper.model.encoder, paper.objective.nested_dropout, paper.model.dtype) == ("registers", "pow2", "bfloat16")
    assert oat_configs.get_config("paper,quest").model.encoder == "conv"
    assert oat_configs.get_config("paper,oatx").model.to_dict() == paper.model.to_dict()
    with pytest.raises(ValueError, match="oatx"):
        oat_configs.get_config("oatx,quest")
    assert "quest" in oat_configs.__doc__ and "encoder=registers" in oat_configs.__doc__
