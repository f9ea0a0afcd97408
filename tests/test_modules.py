"""OATModel structure: exact parameter count, init, attention masks (perturbation / Jacobian), dropout, dtype."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oat_helpers import TINY, initial_params, random_params

from oat_jax import OATConfig, OATModel, param_count
from oat_jax.decoder import OATDecoder, prefix_mask
from oat_jax.encoder import RegisterEncoder, register_attention_mask
from oat_jax.layers import Dropout, hash_bits, sincos_table
from oat_jax.model import abstract_params


@functools.lru_cache(maxsize=None)
def _forward(config, deterministic=True):
    """Jitted OATModel forward (compiled once per config and flag in this process):
    (params, actions, lengths=None, rngs=None) -> (recon, aux)."""
    model = OATModel(config)
    return jax.jit(lambda params, x, lengths=None, rngs=None: model.apply(
        {"params": params}, x, deterministic=deterministic, lengths=lengths, rngs=rngs))


def _actions(config, batch=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, config.horizon, config.action_dim))


def test_default_param_count_matches_the_paper_exactly():
    params = abstract_params(OATConfig(action_dim=7))
    assert param_count(params["encoder"]) == 1_576_964
    assert param_count(params["decoder"]) == 4_217_095
    assert param_count(params) == 5_794_059
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"].shape == (256, 682)


def test_init_matches_the_spec():
    params = initial_params(TINY)
    enc, dec = params["encoder"], params["decoder"]
    for head in (enc["head"], dec["head"]):
        assert not np.any(head["kernel"]) and not np.any(head["bias"])
    assert 0.75 < float(jnp.std(enc["registers"])) < 1.25  # N(0, 1), 256 samples
    assert 0.01 < float(jnp.std(dec["mask_token"])) < 0.03 and float(jnp.max(jnp.abs(dec["mask_token"]))) <= 0.04
    recon, aux = _forward(TINY)(params, _actions(TINY))
    np.testing.assert_array_equal(aux["latents"], 0.0)  # zero-initialised head: every token is the centre code
    assert np.all(aux["tokens"] == aux["tokens"][0, 0])
    np.testing.assert_array_equal(recon, 0.0)


def test_sincos_table_is_sin_half_then_cos_half():
    table = sincos_table(5, 8)  # omega_i = 10000^(-i/4), i = 0..3
    omega = 10000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(table[3], np.concatenate([np.sin(3 * omega), np.cos(3 * omega)]), rtol=1e-6)
    np.testing.assert_array_equal(table[0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_register_attention_mask_layout():
    mask = register_attention_mask(3, 2, causal_registers=True)
    expected = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(mask, expected)
    expected[3, 4] = True
    np.testing.assert_array_equal(register_attention_mask(3, 2, causal_registers=False), expected)


@pytest.mark.parametrize("causal_registers", [True, False])
def test_register_dependencies_follow_the_attention_mask(causal_registers):
    """Jacobians w.r.t. the register inputs: action-token outputs never depend on registers; latent i depends on
    register j iff j <= i (causal) or always (non-causal)."""
    config = TINY.replace(causal_registers=causal_registers)
    enc_params = random_params(TINY)["encoder"]
    encoder, x = RegisterEncoder(config), _actions(config, batch=2)

    def outputs(registers):
        variables = {"params": dict(enc_params, registers=registers)}
        return (encoder.apply(variables, x, method=RegisterEncoder.hidden), encoder.apply(variables, x))

    jac_hidden, jac_latents = jax.jit(jax.jacobian(outputs))(enc_params["registers"])
    assert not np.any(jac_hidden[:, :config.horizon])  # (B, H+N, E, N, E): action rows are exactly zero
    n = config.num_tokens
    expected = np.tril(np.ones((n, n), bool)) if causal_registers else np.ones((n, n), bool)
    for jac in (jac_hidden[:, config.horizon:], jac_latents):  # (B, N, C, N, E)
        np.testing.assert_array_equal(np.abs(np.asarray(jac)).max(axis=(0, 2, 4)) > 0, expected)
    # The same through a finite change of register j: earlier latents are bit-identical.
    j = 2
    bumped = enc_params["registers"].at[j].add(jax.random.normal(jax.random.key(7), (config.enc_width,)))
    latents = jax.jit(lambda r: outputs(r)[1])
    change = np.abs(np.asarray(latents(bumped) - latents(enc_params["registers"]))).max(axis=-1)  # (B, N)
    if causal_registers:
        assert not np.any(change[:, :j])
    else:
        assert change[:, :j].min() > 1e-3
    assert change[:, j:].min() > 1e-3


@pytest.mark.parametrize("causal_decoder", [True, False])
def test_decoder_step_t_ignores_later_query_steps_iff_causal(causal_decoder):
    config = TINY.replace(causal_decoder=causal_decoder)
    dec_params = random_params(TINY)["decoder"]
    decoder = OATDecoder(config)
    codes = jax.random.uniform(jax.random.key(1), (1, config.num_tokens, config.latent_dim), minval=-1, maxval=1)
    memory = decoder.apply({"params": dec_params}, codes, jnp.array([config.num_tokens]), method=OATDecoder.memory)
    queries = decoder.apply({"params": dec_params}, 1, method=OATDecoder.queries)
    jac = jax.jit(jax.jacobian(lambda q: decoder.apply({"params": dec_params}, q, memory,
                                                       method=OATDecoder.transform)))(queries)[0, :, :, 0]  # (H out, D_a, H in, E)
    dependence = np.abs(np.asarray(jac)).max(axis=(1, 3))  # (t_out, s_in)
    future = np.triu(np.ones_like(dependence, bool), k=1)
    assert np.all(dependence[~future] > 0)
    if causal_decoder:
        assert not np.any(dependence[future])
    else:
        assert np.all(dependence[future] > 0)


def test_deterministic_forward_is_repeatable_and_dropout_is_random():
    params, x = random_params(TINY), _actions(TINY)
    np.testing.assert_array_equal(_forward(TINY)(params, x)[0], _forward(TINY)(params, x)[0])
    rngs = lambda s: {"dropout": jax.random.key(s)}
    (c, aux_c), (d, aux_d) = (_forward(TINY, deterministic=False)(params, x, rngs=rngs(s)) for s in (1, 2))
    np.testing.assert_array_equal(aux_c["lengths"], TINY.num_tokens)  # no lengths given: all N
    assert float(jnp.abs(c - d).max()) > 1e-4


def test_prefix_mask():
    np.testing.assert_array_equal(prefix_mask(jnp.array([1, 3]), 4), [[1, 0, 0, 0], [1, 1, 1, 0]])


def test_bfloat16_compute_keeps_fp32_params_and_outputs():
    params, x = random_params(TINY), _actions(TINY)
    recon_bf16, aux = _forward(TINY.replace(dtype="bfloat16"))(params, x)
    recon_f32, aux_f32 = _forward(TINY)(params, x)
    assert recon_bf16.dtype == jnp.float32 and aux["latents"].dtype == jnp.float32
    assert aux["codes"].dtype == jnp.float32 and aux["tokens"].dtype == jnp.int32
    # bf16 matmuls change the numbers a little (and may flip a few latents across a rounding boundary).
    assert np.mean(np.asarray(aux["tokens"] == aux_f32["tokens"])) > 0.8
    diff = float(jnp.mean(jnp.abs(recon_bf16 - recon_f32)))
    assert 0 < diff < 0.05 * float(jnp.mean(jnp.abs(recon_f32)))


@pytest.mark.parametrize("change, field", [(dict(enc_width=30, enc_heads=4), "enc_width"),
                                           (dict(dtype="float16"), "dtype"), (dict(horizon=0), "horizon"),
                                           (dict(dec_dropout=1.0), "dec_dropout")])
def test_config_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        OATConfig(**change)


def test_config_dict_round_trip():
    config = TINY.replace(causal_decoder=False, enc_patch=2)
    assert OATConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown OATConfig fields"):
        OATConfig.from_dict(dict(config.to_dict(), bogus=1))


def test_registers_only_skips_action_rows_with_identical_register_outputs():
    """The last block computes the register rows alone; they equal the full computation's register rows."""
    enc_params = random_params(TINY)["encoder"]
    encoder, x = RegisterEncoder(TINY), _actions(TINY, batch=3)
    full = encoder.apply({"params": enc_params}, x, method=RegisterEncoder.hidden)  # (B, H+N, E)
    regs = encoder.apply({"params": enc_params}, x, True, True, method=RegisterEncoder.hidden)  # (B, N, E)
    assert regs.shape == (3, TINY.num_tokens, TINY.enc_width)
    np.testing.assert_allclose(regs, full[:, TINY.horizon:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rng_impl", ["hash", "threefry"])
def test_dropout_keeps_the_right_fraction_scales_and_depends_on_the_key(rng_impl):
    layer, x = Dropout(0.25, rng_impl), jnp.ones((64, 32, 128), jnp.float32)
    out = lambda seed: np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(seed)}))
    a, b = out(0), out(1)
    kept = a != 0
    assert abs(kept.mean() - 0.75) < 0.01  # 262k draws: 4 sigma is ~0.0034
    np.testing.assert_allclose(a[kept], 1 / 0.75, rtol=1e-6)  # inverted dropout keeps the mean
    assert 0.5 < (kept == (b != 0)).mean() < 0.7  # independent masks agree on 0.75^2 + 0.25^2 = 62.5%
    np.testing.assert_array_equal(a, out(0))  # same key, same mask
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)


def test_hash_bits_are_uniform_and_uncorrelated_between_neighbours():
    bits = np.asarray(hash_bits(jax.random.key(3), (1 << 16,)), np.float64) / 2.0 ** 32  # U[0, 1)
    assert abs(bits.mean() - 0.5) < 0.01 and abs(bits.var() - 1 / 12) < 0.005
    hist = np.histogram(bits, bins=16, range=(0, 1))[0]
    assert hist.min() > 0.9 * len(bits) / 16 and hist.max() < 1.1 * len(bits) / 16
    assert abs(np.corrcoef(bits[:-1], bits[1:])[0, 1]) < 0.02
    with pytest.raises(ValueError, match="rng_impl"):
        Dropout(0.1, "philox").apply({}, jnp.ones(4), deterministic=False, rngs={"dropout": jax.random.key(0)})
