"""Diffusion Policy baseline: diffusers' cosine schedule and DDIM step, the DDIM sampler on an analytic two-mode
denoiser, determinism, and a tiny denoiser that trains (state and image observations)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from oat_jax.policy import ddim
from oat_jax.policy.diffusion import (DiffusionConfig, DiffusionPolicyModel, diffusion_loss, init_params,
                                      sample_actions)


def _alpha_bar(t):
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def test_schedule_matches_diffusers_closed_form():
    acp = ddim.alphas_cumprod(100)
    assert acp.shape == (100,) and acp.dtype == np.float32
    # Uncapped betas telescope: abar_t = alpha_bar((t + 1) / T) / alpha_bar(0).
    for t in (0, 1, 10, 50, 90, 98):
        np.testing.assert_allclose(acp[t], _alpha_bar((t + 1) / 100) / _alpha_bar(0), rtol=2e-5)
    # The last beta is capped at max_beta = 0.999 (alpha_bar(1) = cos(pi/2)^2 ~ 0).
    np.testing.assert_allclose(ddim.betas_for_alpha_bar(100)[-1], 0.999, rtol=1e-6)
    np.testing.assert_allclose(acp[99], acp[98] * (1 - 0.999), rtol=1e-4)
    np.testing.assert_array_equal(ddim.ddim_timesteps(100, 10), np.arange(90, -1, -10))
    np.testing.assert_array_equal(ddim.ddim_timesteps(100, 3), [66, 33, 0])  # "leading": multiples of T // n
    with pytest.raises(ValueError):
        ddim.ddim_timesteps(100, 101)

    x0, noise = np.array([[0.3, -2.0]], np.float32), np.array([[1.5, 0.2]], np.float32)
    t = np.array([50], np.int32)
    noisy = ddim.add_noise(acp, x0, noise, t)
    np.testing.assert_allclose(noisy, np.sqrt(acp[50]) * x0 + np.sqrt(1 - acp[50]) * noise, rtol=1e-6)
    # DDIM (eta 0) from t = 50 to 40 with the true noise: x0 is recovered, then clipped to [-1, 1].
    step = ddim.ddim_step(acp, noise, jnp.int32(50), noisy, 10)
    expected = np.sqrt(acp[40]) * np.clip(x0, -1, 1) + np.sqrt(1 - acp[40]) * noise
    np.testing.assert_allclose(step, expected, rtol=1e-5, atol=1e-6)
    # The last step (t = 0, previous timestep negative) uses abar_prev = 1: the output is the clipped x0.
    np.testing.assert_allclose(ddim.ddim_step(acp, noise, jnp.int32(0), ddim.add_noise(acp, x0, noise, t * 0), 10),
                               np.clip(x0, -1, 1), rtol=1e-5, atol=1e-5)
    # Other parameterizations give the same step when they predict the same x0 (no clipping needed here).
    small = x0 * 0.1
    noisy = ddim.add_noise(acp, small, noise, t)
    eps_step = ddim.ddim_step(acp, noise, jnp.int32(50), noisy, 10)
    for kind in ("sample", "v_prediction"):
        out = ddim.prediction_target(acp, small, noise, t, kind)
        np.testing.assert_allclose(ddim.ddim_step(acp, out, jnp.int32(50), noisy, 10, kind), eps_step, atol=1e-5)


def test_ddim_sampler_recovers_two_modes_with_the_exact_denoiser():
    acp = ddim.alphas_cumprod(100)
    modes, std = np.array([-0.6, 0.6], np.float32), 0.02

    def exact_epsilon(x, t):  # E[noise | x_t] for p(x0) = mixture of N(+-0.6, std^2) with equal weights
        a = jnp.asarray(acp)[t][:, None, None, None]
        var = a * std ** 2 + 1 - a
        diff = x[..., None] - jnp.sqrt(a) * modes
        weights = jax.nn.softmax(-0.5 * diff ** 2 / var, axis=-1)
        return jnp.sqrt(1 - a[..., 0]) * jnp.sum(weights * diff, axis=-1) / var[..., 0]

    noise = jax.random.normal(jax.random.PRNGKey(0), (2000, 1, 1))
    x = np.asarray(ddim.ddim_sample(exact_epsilon, noise, acp, 10)).ravel()
    distance = np.abs(np.abs(x) - 0.6)
    assert 0.45 < np.mean(x > 0) < 0.55
    assert np.mean(distance < 0.1) > 0.95  # 10 steps: about 2% land further, on the inner side of a mode
    assert np.abs(x).min() > 0.25  # nothing in between the modes
    x = np.asarray(ddim.ddim_sample(exact_epsilon, noise, acp, 50)).ravel()  # finer steps follow the ODE closely
    assert np.abs(np.abs(x) - 0.6).max() < 0.1 and 0.45 < np.mean(x > 0) < 0.55


def tiny_config(**kw):
    fields = dict(action_dim=3, horizon=8, obs_dim=5, n_obs_steps=2, embed_dim=32, depth=1, num_heads=2,
                  state_hidden=16)
    fields.update(kw)
    return DiffusionConfig(**fields)


def test_config_round_trip_and_validation():
    config = tiny_config(num_cameras=1, image_shape=(16, 16, 3))
    assert DiffusionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="prediction_type"):
        tiny_config(prediction_type="noise")
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_config(num_inference_steps=200)
    with pytest.raises(ValueError, match="observation"):
        tiny_config(obs_dim=0)
    with pytest.raises(ValueError, match="Unknown"):
        DiffusionConfig.from_dict({**config.to_dict(), "beta_start": 1e-4})


def batch(config, size=16, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    state = jax.random.normal(k1, (size, config.n_obs_steps, config.obs_dim))
    # actions in [-1, 1] that depend on the observation, smooth over the horizon
    ramp = jnp.linspace(-1.0, 1.0, config.horizon)[None, :, None]
    actions = jnp.tanh(state[:, -1, :config.action_dim][:, None, :] * 0.5 + 0.3 * ramp)
    return {"state": state}, actions


def test_sampling_is_deterministic_per_key_and_in_range():
    config = tiny_config()
    model = DiffusionPolicyModel(config)
    params = init_params(config, jax.random.PRNGKey(0))
    obs, _ = batch(config, 4)
    sample = jax.jit(sample_actions, static_argnums=(0, 4))
    a = np.asarray(sample(model, params, obs, jax.random.PRNGKey(1), 10))
    b = np.asarray(sample(model, params, obs, jax.random.PRNGKey(1), 10))
    c = np.asarray(sample(model, params, obs, jax.random.PRNGKey(2), 10))
    assert a.shape == (4, config.horizon, config.action_dim) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert np.all(np.abs(a) <= config.clip_sample_range + 1e-6)


def _trainer(model, optimizer):
    @jax.jit
    def step(params, opt_state, obs, actions, rng):
        loss, grads = jax.value_and_grad(lambda p: diffusion_loss(model, p, obs, actions, rng))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def test_tiny_state_model_trains():
    config = tiny_config()
    model = DiffusionPolicyModel(config)
    params = init_params(config, jax.random.PRNGKey(0))
    obs, actions = batch(config)
    out = model.apply({"params": params}, obs, actions, jnp.arange(16, dtype=jnp.int32))
    assert out.shape == actions.shape and out.dtype == jnp.float32
    optimizer = optax.adam(3e-3)
    step, opt_state = _trainer(model, optimizer), optimizer.init(params)
    # the loss over a fixed set of (noise, timestep) draws, before and after training on fresh draws
    eval_keys = jax.random.split(jax.random.PRNGKey(99), 8)
    evaluate = jax.jit(lambda p: jnp.mean(jax.vmap(lambda k: diffusion_loss(model, p, obs, actions, k))(eval_keys)))
    before = float(evaluate(params))
    for i in range(40):
        params, opt_state, loss = step(params, opt_state, obs, actions, jax.random.PRNGKey(i))
        assert np.isfinite(float(loss))
    after = float(evaluate(params))
    assert after < 0.4 * before, (before, after)


def test_tiny_image_model_forward_and_train_step():
    config = tiny_config(obs_dim=0, num_cameras=1, image_shape=(16, 16, 3), conv_channels=(8, 8), keypoints=4,
                         dropout=0.1)
    model = DiffusionPolicyModel(config)
    params = init_params(config, jax.random.PRNGKey(0))
    images = jax.random.randint(jax.random.PRNGKey(1), (2, 2, 1, 16, 16, 3), 0, 256).astype(jnp.uint8)
    obs = {"image": images}
    actions = jnp.tanh(jax.random.normal(jax.random.PRNGKey(2), (2, config.horizon, config.action_dim)))
    out = model.apply({"params": params}, obs, actions, jnp.array([0, 99], jnp.int32))
    assert out.shape == actions.shape and np.all(np.isfinite(np.asarray(out)))
    optimizer = optax.adam(1e-3)
    new_params, _, loss = _trainer(model, optimizer)(params, optimizer.init(params), obs, actions,
                                                     jax.random.PRNGKey(3))
    assert np.isfinite(float(loss)) and loss > 0
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
    assert moved["image_encoder"]["conv0"]["kernel"] and moved["output_proj"]["kernel"]
    sampled = functools.partial(sample_actions, model, num_inference_steps=2)(params, obs, jax.random.PRNGKey(4))
    assert sampled.shape == actions.shape


@pytest.mark.parametrize("causal", [True, False])
def test_causal_attention_hides_later_action_steps(causal):
    """With causal_attn (the reference setting) the output at step t does not depend on noisy actions after t;
    with full attention it does."""
    config = DiffusionConfig(action_dim=2, horizon=6, obs_dim=3, embed_dim=16, depth=2, num_heads=2,
                             state_hidden=16, causal_attn=causal)
    model = DiffusionPolicyModel(config)
    params = init_params(config, jax.random.PRNGKey(0))
    obs = {"state": jnp.ones((1, 2, 3), jnp.float32)}
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 6, 2))
    t = jnp.array([5], jnp.int32)
    out = model.apply({"params": params}, obs, x, t)
    out2 = model.apply({"params": params}, obs, x.at[:, 4:].add(1.0), t)
    early_same = np.allclose(out[:, :4], out2[:, :4], atol=1e-6)
    assert early_same == causal
    assert not np.allclose(out[:, 4:], out2[:, 4:])
