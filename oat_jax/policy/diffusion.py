"""Diffusion Policy baseline (docs/POLICY.md): a transformer denoiser over the H steps of an action chunk,
conditioned on the same observation memory as the token policy, trained to predict the noise of the DDIM
schedule (`oat_jax.policy.ddim`) and sampled with 10 deterministic DDIM steps.

Denoiser: x = Dense(E)(noisy actions) + learned position embedding; `depth` `PolicyBlock`s with causal
(`causal_attn`, the reference DP transformer's setting) or full self-attention over the H steps and
cross-attention to the conditioning memory [time token, observation tokens] (the time token = MLP(sinusoidal(t)),
first in the memory as in the reference Diffusion Policy transformer); final RMSNorm; Dense(action_dim).
Cross-attention keys/values are per-token projections, so when sampling the observation tokens' K/V are computed
once and only the time token's per DDIM step. Actions are normalized to [-1, 1] by the caller.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.config import JsonConfig
from oat_jax.policy import ddim
from oat_jax.policy.layers import PolicyBlock, RMSNorm
from oat_jax.policy.model import DTYPES, Observation, dummy_observation
from oat_jax.policy.obs_encoders import ImageEncoder, InstructionEncoder, StateEncoder

BETA_SCHEDULES = ("squaredcos_cap_v2",)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(JsonConfig):
    """Architecture and noise schedule of the Diffusion Policy. Defaults: width 256, 4 blocks, DDIM 10 of 100."""

    action_dim: int  # D_a: size of one action vector.
    horizon: int = 32  # H: action steps denoised together (one chunk).
    obs_dim: int = 0  # size of the state vector (0 = no state input).
    n_obs_steps: int = 2  # K: observation frames of history (the last one is the current frame).
    num_cameras: int = 0  # images per frame for the conv encoder (0 = no images).
    image_shape: tuple[int, ...] = ()  # (height, width, channels) of each camera image.
    num_instructions: int = 0  # distinct language instructions of the training data (0 = no language input).
    embed_dim: int = 256  # E: width of the denoiser and of the observation memory tokens.
    depth: int = 4  # number of denoiser blocks.
    num_heads: int = 4  # attention heads (head_dim = embed_dim // num_heads).
    mlp_ratio: float = 4.0  # MLP hidden size of the blocks = mlp_ratio * embed_dim.
    dropout: float = 0.0  # dropout after each sub-layer during training.
    causal_attn: bool = True  # causal self-attention over the action steps (as the reference DP transformer).
    state_hidden: int = 256  # hidden size of the state MLP encoder.
    conv_channels: tuple[int, ...] = (32, 64, 64)  # channels of the conv image encoder's stride-2 layers.
    keypoints: int = 32  # spatial-softmax keypoints of the image encoder.
    num_train_timesteps: int = 100  # T: steps of the training noise schedule.
    num_inference_steps: int = 10  # DDIM steps when sampling (default of `sample_actions`).
    beta_schedule: str = "squaredcos_cap_v2"  # diffusers' cosine schedule (the only one implemented).
    prediction_type: str = "epsilon"  # network output: 'epsilon' (noise), 'sample' (x0) or 'v_prediction'.
    clip_sample: bool = True  # clip the predicted x0 to [-clip_sample_range, clip_sample_range] when sampling.
    clip_sample_range: float = 1.0  # bound of that clip (actions are normalized to [-1, 1]).
    dtype: str = "float32"  # compute dtype of matmuls ('float32' | 'bfloat16'); params and norms stay float32.

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        object.__setattr__(self, "conv_channels", tuple(int(v) for v in self.conv_channels))
        self.validate()

    @property
    def mlp_dim(self) -> int:
        """Hidden size of the blocks' MLP."""
        return int(self.mlp_ratio * self.embed_dim)

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent field."""
        for name in ("action_dim", "horizon", "n_obs_steps", "embed_dim", "depth", "num_heads", "state_hidden",
                     "keypoints", "num_train_timesteps", "num_inference_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiffusionConfig.{name} must be a positive int, got {value!r}.")
        if self.embed_dim % self.num_heads or self.embed_dim % 2:
            raise ValueError(f"DiffusionConfig.embed_dim ({self.embed_dim}) must be even and divisible by "
                             f"num_heads ({self.num_heads}).")
        if self.num_instructions < 0:
            raise ValueError(f"DiffusionConfig.num_instructions must be >= 0, got {self.num_instructions}.")
        if self.obs_dim < 0 or self.num_cameras < 0 or self.obs_dim == self.num_cameras == 0:
            raise ValueError(f"DiffusionConfig needs an observation: obs_dim ({self.obs_dim}) > 0 and/or "
                             f"num_cameras ({self.num_cameras}) > 0, neither negative.")
        if self.num_cameras and len(self.image_shape) != 3:
            raise ValueError(f"DiffusionConfig.image_shape must be (height, width, channels) when num_cameras > 0, "
                             f"got {self.image_shape}.")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(f"DiffusionConfig.num_inference_steps ({self.num_inference_steps}) must be <= "
                             f"num_train_timesteps ({self.num_train_timesteps}).")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"DiffusionConfig.beta_schedule must be one of {BETA_SCHEDULES}, "
                             f"got {self.beta_schedule!r}.")
        if self.prediction_type not in ddim.PREDICTION_TYPES:
            raise ValueError(f"DiffusionConfig.prediction_type must be one of {ddim.PREDICTION_TYPES}, "
                             f"got {self.prediction_type!r}.")
        if not self.clip_sample_range > 0:
            raise ValueError(f"DiffusionConfig.clip_sample_range must be > 0, got {self.clip_sample_range}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DiffusionConfig.dropout must be in [0, 1), got {self.dropout}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"DiffusionConfig.dtype must be one of {DTYPES}, got {self.dtype!r}.")


    def alphas_cumprod(self) -> np.ndarray:
        """(T,) float32 cumulative alphas of the training schedule."""
        return ddim.alphas_cumprod(self.num_train_timesteps)


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding (Diffusion Policy's SinusoidalPosEmb): t (B,) -> (B, dim) float32, [sin | cos] of
    t * exp(-log(10000) * i / (dim/2 - 1)), i = 0..dim/2-1."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * (-math.log(10000.0) / max(half - 1, 1)))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class DiffusionPolicyModel(nn.Module):
    """The denoiser. Methods (all take the "params" collection; RNG stream "dropout" when deterministic=False):

      __call__(obs, noisy_actions (B, H, D_a) f32, timesteps (B,) int32, deterministic) -> (B, H, D_a) float32
      encode(obs, deterministic) -> memory (B, M, E) float32 (as `TokenPolicyModel.encode`)
      memory_kv(memory) -> per-block cross-attention (k, v) of the observation tokens, each (B, M, heads, hd)
      denoise(noisy_actions, timesteps, mem_kv, deterministic) -> (B, H, D_a) float32 (adds the time token's K/V)
    """

    config: DiffusionConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        dense = lambda f, name: nn.Dense(f, dtype=dtype, param_dtype=jnp.float32, name=name)
        self.state_encoder = StateEncoder(c.embed_dim, c.state_hidden, dtype=dtype) if c.obs_dim else None
        self.image_encoder = (ImageEncoder(c.embed_dim, c.conv_channels, c.keypoints, dtype=dtype)
                              if c.num_cameras else None)
        self.instruction_encoder = (InstructionEncoder(c.num_instructions, c.embed_dim) if c.num_instructions
                                    else None)
        self.input_proj = dense(c.embed_dim, "input_proj")
        self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02), (c.horizon, c.embed_dim),
                                    jnp.float32)
        self.time_fc1, self.time_fc2 = dense(4 * c.embed_dim, "time_fc1"), dense(c.embed_dim, "time_fc2")
        self.blocks = [PolicyBlock(c.embed_dim, c.num_heads, c.mlp_dim, c.dropout, dtype=dtype, name=f"block_{i}")
                       for i in range(c.depth)]
        self.memory_norm = RMSNorm()
        self.time_norm = RMSNorm()
        self.final_norm = RMSNorm()
        self.output_proj = dense(c.action_dim, "output_proj")
        self.drop = nn.Dropout(c.dropout)

    def encode(self, obs: Observation, deterministic: bool = True) -> jax.Array:
        """Observation dict -> memory tokens (B, M, E) float32 (M = K for state, + K * cams for images, + 1 for
        the instruction)."""
        parts = []
        if self.state_encoder is not None:
            parts.append(self.state_encoder(obs["state"]))
        if self.image_encoder is not None:
            parts.append(self.image_encoder(obs["image"]))
        if self.instruction_encoder is not None:
            parts.append(self.instruction_encoder(obs["language"]))
        memory = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return self.drop(self.memory_norm(memory), deterministic=deterministic)

    def memory_kv(self, memory: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Cross-attention keys/values of every block, computed once per observation."""
        dtype = jnp.dtype(self.config.dtype)
        return tuple(block.memory_kv(memory.astype(dtype)) for block in self.blocks)

    def denoise(self, noisy_actions: jax.Array, timesteps: jax.Array, mem_kv, deterministic: bool = True
                ) -> jax.Array:
        """noisy_actions (B, H', D_a) float32 (H' <= H), timesteps (B,) int32 -> model output (B, H', D_a) f32."""
        c = self.config
        length = noisy_actions.shape[1]
        temb = self.time_fc2(nn.gelu(self.time_fc1(timestep_embedding(timesteps, c.embed_dim))))
        time_token = self.time_norm(temb.astype(jnp.float32)[:, None, :])  # (B, 1, E): first memory token
        x = self.input_proj(noisy_actions.astype(jnp.float32)).astype(jnp.float32) + self.pos_embed[:length]
        x = self.drop(x, deterministic=deterministic)
        mask = jnp.ones((length, length), bool)  # full: every step sees the whole chunk
        if c.causal_attn:
            mask = jnp.tril(mask)  # step t sees steps <= t
        for block, (k, v) in zip(self.blocks, mem_kv):
            tk, tv = block.memory_kv(time_token.astype(jnp.dtype(c.dtype)))  # (B, 1, heads, hd) each
            x = block(x, (jnp.concatenate([tk, k], axis=1), jnp.concatenate([tv, v], axis=1)), mask, deterministic)
        return self.output_proj(self.final_norm(x)).astype(jnp.float32)

    def __call__(self, obs: Observation, noisy_actions: jax.Array, timesteps: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """Predicted noise (or x0 / velocity, per `prediction_type`) (B, H, D_a) float32 of noisy_actions."""
        mem_kv = self.memory_kv(self.encode(obs, deterministic))
        return self.denoise(noisy_actions, timesteps, mem_kv, deterministic)


def init_params(config: DiffusionConfig, rng: jax.Array) -> dict:
    """Fresh float32 params of `DiffusionPolicyModel(config)`."""
    actions = jnp.zeros((1, config.horizon, config.action_dim), jnp.float32)
    return DiffusionPolicyModel(config).init({"params": rng}, dummy_observation(config), actions,
                                             jnp.zeros((1,), jnp.int32))["params"]


def diffusion_loss(model: DiffusionPolicyModel, params, obs: Observation, actions: jax.Array,
                   rng: jax.Array) -> jax.Array:
    """Denoising loss of one batch: timesteps uniform in 0..T-1, standard normal noise, MSE between the
    network output and its target (the noise for 'epsilon'), averaged over every element.

    Args:
      actions: (B, H, D_a) float32 normalized to [-1, 1].
      rng: PRNG key (noise, timesteps and dropout).
    Returns:
      float32 scalar.
    """
    c = model.config
    acp = c.alphas_cumprod()
    noise_key, t_key, drop_key = jax.random.split(rng, 3)
    actions = actions.astype(jnp.float32)
    noise = jax.random.normal(noise_key, actions.shape, jnp.float32)
    t = jax.random.randint(t_key, (actions.shape[0],), 0, c.num_train_timesteps, jnp.int32)
    noisy = ddim.add_noise(acp, actions, noise, t)
    pred = model.apply({"params": params}, obs, noisy, t, deterministic=False, rngs={"dropout": drop_key})
    target = ddim.prediction_target(acp, actions, noise, t, c.prediction_type)
    return jnp.mean(jnp.square(pred - target))


def sample_actions(model: DiffusionPolicyModel, params, obs: Observation, rng: jax.Array,
                   num_inference_steps: int | None = None) -> jax.Array:
    """DDIM sampling of action chunks (pure; jit with model and num_inference_steps static).

    The observation memory and the blocks' cross-attention K/V are computed once; x_T ~ N(0, I) from `rng`.
    Args:
      num_inference_steps: static int (None = config.num_inference_steps).
    Returns:
      (B, H, D_a) float32 normalized actions (in [-clip, clip] when clip_sample).
    """
    c = model.config
    steps = c.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    variables = {"params": params}
    memory = model.apply(variables, obs, method=DiffusionPolicyModel.encode)
    mem_kv = model.apply(variables, memory, method=DiffusionPolicyModel.memory_kv)
    noise = jax.random.normal(rng, (memory.shape[0], c.horizon, c.action_dim), jnp.float32)

    def denoise(x, t):
        return model.apply(variables, x, t, mem_kv, method=DiffusionPolicyModel.denoise)

    return ddim.ddim_sample(denoise, noise, c.alphas_cumprod(), steps, c.prediction_type, c.clip_sample,
                            c.clip_sample_range)
