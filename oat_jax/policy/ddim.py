"""The DDIM noise schedule and sampler of the Diffusion Policy baseline, as HuggingFace diffusers'
`DDIMScheduler` computes them with the reference policy's settings (beta_schedule="squaredcos_cap_v2",
set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading", eta=0, use_clipped_model_output=False).

The schedule is a float32 numpy array built once from static settings; the step functions are pure jnp and take
it as an argument, so they trace inside jit / lax loops. Timesteps index `alphas_cumprod` (0 = least noise).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def betas_for_alpha_bar(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine ("squaredcos_cap_v2") betas: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta) with
    abar(t) = cos((t + 0.008) / 1.008 * pi / 2) ** 2. Returns (T,) float32 (computed in float64, as in diffusers
    with Python floats, then cast)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    t = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / t) / alpha_bar(i / t), max_beta) for i in range(t)]
    return np.asarray(betas, np.float32)


def alphas_cumprod(num_train_timesteps: int) -> np.ndarray:
    """(T,) float32 cumulative product of alpha_i = 1 - beta_i, accumulated in float32 like torch.cumprod."""
    return np.cumprod(1.0 - betas_for_alpha_bar(num_train_timesteps), dtype=np.float32)


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """"leading" spacing: arange(n) * (T // n), reversed. (n,) int32, e.g. T=100, n=10 -> [90, 80, ..., 0]."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} must be in 1..num_train_timesteps="
                         f"{num_train_timesteps}.")
    step_ratio = num_train_timesteps // num_inference_steps
    return (np.arange(num_inference_steps) * step_ratio)[::-1].astype(np.int32)


def _scale(acp: jax.Array, t: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
    """sqrt(abar_t) and sqrt(1 - abar_t) for int timesteps t (B,), shaped (B, 1, ...) to broadcast over ndim."""
    a = jnp.asarray(acp, jnp.float32)[t].reshape(t.shape + (1,) * (ndim - t.ndim))
    return jnp.sqrt(a), jnp.sqrt(1.0 - a)


def add_noise(acp: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """Forward process q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    Args:
      acp: (T,) float32 `alphas_cumprod`.
      x0, noise: (B, ...) float32.
      t: (B,) int32 timesteps in 0..T-1.
    Returns:
      (B, ...) float32.
    """
    sa, sb = _scale(acp, t, x0.ndim)
    return sa * x0 + sb * noise


def prediction_target(acp: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array,
                      prediction_type: str = "epsilon") -> jax.Array:
    """What the network regresses (shapes as `add_noise`): the noise, x0, or diffusers' velocity
    sqrt(abar_t) noise - sqrt(1 - abar_t) x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        sa, sb = _scale(acp, t, x0.ndim)
        return sa * noise - sb * x0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


def ddim_step(acp: jax.Array, model_output: jax.Array, t: jax.Array, sample: jax.Array, step_ratio: int,
              prediction_type: str = "epsilon", clip_sample: bool = True, clip_range: float = 1.0) -> jax.Array:
    """One deterministic (eta = 0) DDIM update x_t -> x_{t - step_ratio} (diffusers `DDIMScheduler.step`).

    Args:
      acp: (T,) float32 `alphas_cumprod`.
      model_output: (B, ...) float32 network output at x_t (`prediction_type`).
      t: int32 scalar timestep of `sample`.
      sample: (B, ...) float32 x_t.
      step_ratio: T // num_inference_steps; the previous timestep is t - step_ratio, and abar_prev = 1 when it
        is negative (set_alpha_to_one).
      clip_sample, clip_range: clip the predicted x0 to [-clip_range, clip_range]; the predicted noise is not
        re-derived from the clipped x0 (use_clipped_model_output=False).
    Returns:
      (B, ...) float32 x_{t - step_ratio}.
    """
    acp = jnp.asarray(acp, jnp.float32)
    prev = t - step_ratio
    a_t = acp[t]
    a_prev = jnp.where(prev >= 0, acp[jnp.maximum(prev, 0)], jnp.float32(1.0))
    b_t = 1.0 - a_t
    if prediction_type == "epsilon":
        x0 = (sample - jnp.sqrt(b_t) * model_output) / jnp.sqrt(a_t)
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - jnp.sqrt(a_t) * x0) / jnp.sqrt(b_t)
    elif prediction_type == "v_prediction":
        x0 = jnp.sqrt(a_t) * sample - jnp.sqrt(b_t) * model_output
        eps = jnp.sqrt(a_t) * model_output + jnp.sqrt(b_t) * sample
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    if clip_sample:
        x0 = jnp.clip(x0, -clip_range, clip_range)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps


def ddim_sample(denoise: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array, acp: np.ndarray,
                num_inference_steps: int, prediction_type: str = "epsilon", clip_sample: bool = True,
                clip_range: float = 1.0) -> jax.Array:
    """The DDIM loop (`lax.fori_loop` over the `ddim_timesteps`), starting from x_T = noise (init sigma 1).

    Args:
      denoise: (x_t (B, ...) float32, t (B,) int32) -> model output (B, ...) float32.
      noise: (B, ...) float32 standard normal start.
      acp: (T,) float32 `alphas_cumprod` (static numpy array).
      num_inference_steps: static int n.
    Returns:
      (B, ...) float32 denoised samples.
    """
    num_train = len(acp)
    timesteps = jnp.asarray(ddim_timesteps(num_train, num_inference_steps))
    step_ratio = num_train // num_inference_steps

    def body(i, x):
        t = timesteps[i]
        out = denoise(x, jnp.full((x.shape[0],), t, jnp.int32))
        return ddim_step(acp, out, t, x, step_ratio, prediction_type, clip_sample, clip_range)

    return jax.lax.fori_loop(0, num_inference_steps, body, noise.astype(jnp.float32))
