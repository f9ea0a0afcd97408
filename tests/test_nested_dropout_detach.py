"""`nested_dropout_detach` (+ `_scale`): full-length decodes pass no (or a scaled) gradient into the leading codes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oat_helpers import TINY, random_params, smooth_actions

from oat_jax import OATConfig, OATModel
from oat_jax.decoder import OATDecoder

N = TINY.num_tokens
REF = TINY.replace(nested_dropout="power", nested_dropout_power=-1.0, nested_dropout_full=0.5)
M = 2
DETACH = REF.replace(nested_dropout_detach=M)


def _codes_grad(config, lengths):
    """d(sum of squared decoder outputs) / d codes, (B, N, d), for `lengths` (B,)."""
    params = random_params(config)["decoder"]
    codes = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (len(lengths), N, config.latent_dim)), jnp.float32)
    decoder = OATDecoder(config)
    loss = lambda c: jnp.sum(jnp.square(decoder.apply({"params": params}, c, jnp.asarray(lengths, jnp.int32))))
    return np.asarray(jax.grad(loss)(codes)), np.asarray(decoder.apply({"params": params}, codes,
                                                                       jnp.asarray(lengths, jnp.int32)))


def test_full_length_decodes_stop_the_leading_codes_gradient_and_nothing_else():
    lengths = [N, 1, M, M + 1, N - 1, N]
    grad, out = _codes_grad(DETACH, lengths)
    ref_grad, ref_out = _codes_grad(REF, lengths)
    np.testing.assert_array_equal(out, ref_out)  # the forward pass is the reference's
    for row, k in enumerate(lengths):
        if k == N:
            assert not np.any(grad[row, :M])  # the leading codes get nothing from a full-length decode
            np.testing.assert_array_equal(grad[row, M:], ref_grad[row, M:])
            assert np.all(np.abs(ref_grad[row, :M]).max(axis=-1) > 0)  # ... which the reference would have given
        else:  # shorter prefixes train every kept code, the leading ones included
            np.testing.assert_array_equal(grad[row], ref_grad[row])
            assert np.all(np.abs(grad[row, :k]).max(axis=-1) > 0) and not np.any(grad[row, k:])


def test_the_encoder_gradient_changes_only_through_full_length_rows():
    from oat_jax.training.tokenizer_step import split_reconstruction_loss

    params = random_params(REF)
    actions = jnp.asarray(smooth_actions(6, TINY.horizon, TINY.action_dim))
    short = jnp.asarray(np.random.default_rng(1).integers(1, N, (6, 3)), jnp.int32)

    def encoder_grad(config, rows):
        loss = lambda p: split_reconstruction_loss(OATModel(config), p, actions, short[:rows], jax.random.key(0))
        return jax.tree.leaves(jax.grad(loss)(params)["encoder"])

    for a, b in zip(encoder_grad(DETACH, 6), encoder_grad(REF, 6)):  # every row short: the reference
        np.testing.assert_array_equal(a, b)
    differs = [not np.allclose(a, b) for a, b in zip(encoder_grad(DETACH, 3), encoder_grad(REF, 3))]
    assert any(differs)


def test_a_scale_passes_that_share_of_the_full_length_gradient():
    lengths = [N, 2, N]
    scaled = DETACH.replace(nested_dropout_detach_scale=0.2)
    grad, out = _codes_grad(scaled, lengths)
    ref_grad, ref_out = _codes_grad(REF, lengths)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(grad[[0, 2], :M], 0.2 * ref_grad[[0, 2], :M], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grad[[0, 2], M:], ref_grad[[0, 2], M:])
    np.testing.assert_array_equal(grad[1], ref_grad[1])


@pytest.mark.parametrize("bad", [-1, N, 1.0, True])
def test_out_of_range_values_are_rejected(bad):
    with pytest.raises(ValueError, match="nested_dropout_detach"):
        REF.replace(nested_dropout_detach=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_out_of_range_scales_are_rejected(bad):
    with pytest.raises(ValueError, match="nested_dropout_detach_scale"):
        DETACH.replace(nested_dropout_detach_scale=bad)


def test_unordered_tokenizers_cannot_detach():
    with pytest.raises(ValueError, match="nested_dropout='none'"):
        TINY.replace(nested_dropout="none", nested_dropout_detach=1)


def test_configs_written_before_the_field_load_as_the_reference():
    fields = DETACH.to_dict()
    del fields["nested_dropout_detach"], fields["nested_dropout_detach_scale"]
    old = OATConfig.from_dict(fields)
    assert old.nested_dropout_detach == 0 and old.nested_dropout_detach_scale == 0.0


def test_the_training_configs():
    from experiments.configs import oat as oat_configs
    from oat_jax.training.tokenizer_step import model_config

    assert oat_configs.get_config("paper").model.nested_dropout_detach == 0  # the reference
    cfg = oat_configs.get_config("")
    default = model_config(cfg.model, 4)
    assert (default.nested_dropout_detach, default.nested_dropout_detach_scale) == (1, 0.3)  # token 1 detached
    cfg.model.update(nested_dropout_detach=2, nested_dropout_detach_scale=0.2)
    config = model_config(cfg.model, 4)
    assert (config.nested_dropout_detach, config.nested_dropout_detach_scale) == (2, 0.2)
    for unordered in ("oatx", "quest", "paper,oatx"):  # no nested dropout: the variants switch the detach off
        assert model_config(oat_configs.get_config(unordered).model, 4).nested_dropout_detach == 0, unordered
    oatx = oat_configs.get_config("oatx")
    oatx.model.nested_dropout_detach = 1  # unordered: every decode is full length, so nothing may be detached
    with pytest.raises(ValueError, match="nested_dropout_detach"):
        model_config(oatx.model, 4)
