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


def test_quest_variant_changes_only_the_encoder_and_the_objective():
    from experiments.configs import oat as oat_configs

    base, quest = oat_configs.get_config(""), oat_configs.get_config("quest")
    assert base.model.encoder == "registers" and base.objective.nested_dropout != "none"
    changed = {k for k in base.model if base.model[k] != quest.model[k]}
    # The conv encoder downsamples single steps itself (QueST), so it takes no input patches.
    assert changed == {"encoder", "enc_patch"}
    assert (quest.model.encoder, quest.model.enc_patch) == ("conv", 1)
    # Without nested dropout every decode is full-length: nothing to split, hinge or detach.
    assert quest.objective.to_dict() == oat_configs.get_config("oatx").objective.to_dict()
    assert quest.objective.nested_dropout == "none" and quest.objective.detach_tokens == 0
    for section in ("optim", "train", "data", "ema", "augment"):  # the same training recipe and budget
        assert quest[section].to_dict() == base[section].to_dict(), section
    paper = oat_configs.get_config("paper,quest")
    assert paper.model.encoder == "conv" and paper.model.dtype == "bfloat16"
    assert "quest" in oat_configs.__doc__


def test_conv_variant_orders_tokens_over_the_conv_encoder():
    from experiments.configs import oat as oat_configs

    base, conv = oat_configs.get_config(""), oat_configs.get_config("conv")
    assert {k for k in base.model if base.model[k] != conv.model[k]} == {"encoder", "enc_patch"}
    assert conv.model.encoder == "conv" and conv.model.to_dict() == oat_configs.get_config("quest").model.to_dict()
    assert conv.objective.to_dict() == base.objective.to_dict()  # the default's ordering objective
    for section in ("optim", "train", "data", "ema", "augment"):
        assert conv[section].to_dict() == base[section].to_dict(), section
    paper = oat_configs.get_config("paper,conv")  # the reference objective over the conv encoder
    assert paper.model.encoder == "conv" and paper.objective.nested_dropout == "pow2"
