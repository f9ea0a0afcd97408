"""`PolicyConfig` and `TokenPolicyModel`: the autoregressive action-token policy (docs/POLICY.md).

A causal transformer over action tokens with cross-attention to observation memory tokens in every block:
RMSNorm pre-norm blocks, learned position embeddings, output head tied to the token embedding. Token ids:
0..V-1 are the tokenizer's ids, BOS = V starts every sequence, and EOS = V+1 ends the sequences of a
variable-length tokenizer (FAST); padding is handled by loss masks, never embedded as its own id.

Sequence layout (S = `seq_len` positions):
  fixed length N:      inputs [BOS, t0, ..., t_{N-2}]        targets [t0, ..., t_{N-1}]
  variable length L<=N: inputs [BOS, t0, ..., t_{N-1}]        targets [t0, ..., t_{L-1}, EOS, (masked)...]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.config import JsonConfig
from oat_jax.policy.layers import PolicyBlock, RMSNorm
from oat_jax.policy.obs_encoders import ImageEncoder, InstructionEncoder, StateEncoder

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class PolicyConfig(JsonConfig):
    """Architecture of the token policy. Defaults: the paper's 4 layers, width 256, 4 heads."""

    vocab_size: int  # V: token ids of the tokenizer are 0..V-1 (BOS = V, EOS = V + 1).
    max_tokens: int  # N: longest token sequence of one action chunk.
    variable_length: bool = False  # True for tokenizers with variable-length sequences (FAST): adds EOS.
    obs_dim: int = 0  # size of the state vector (0 = no state input).
    n_obs_steps: int = 2  # K: observation frames of history (the last one is the current frame).
    num_cameras: int = 0  # images per frame for the conv encoder (0 = no images).
    image_shape: tuple[int, ...] = ()  # (height, width, channels) of each camera image.
    num_instructions: int = 0  # distinct language instructions of the training data (0 = no language input).
    width: int = 256  # E: width of the transformer, token and memory embeddings.
    depth: int = 4  # number of decoder blocks.
    num_heads: int = 4  # attention heads (head_dim = width // num_heads).
    mlp_ratio: float = 4.0  # MLP hidden size = mlp_ratio * width.
    dropout: float = 0.1  # dropout after each sub-layer during training.
    state_hidden: int = 256  # hidden size of the state MLP encoder.
    conv_channels: tuple[int, ...] = (32, 64, 64)  # channels of the conv image encoder's stride-2 layers.
    keypoints: int = 32  # spatial-softmax keypoints of the image encoder.
    dtype: str = "float32"  # compute dtype of matmuls ('float32' | 'bfloat16'); params and norms stay float32.

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(v) for v in self.image_shape))
        object.__setattr__(self, "conv_channels", tuple(int(v) for v in self.conv_channels))
        self.validate()

    @property
    def bos_id(self) -> int:
        """Id of the begin-of-sequence token (= vocab_size)."""
        return self.vocab_size

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token (vocab_size + 1), or -1 for fixed-length tokenizers."""
        return self.vocab_size + 1 if self.variable_length else -1

    @property
    def embed_size(self) -> int:
        """Rows of the tied token embedding / output logits: V + BOS (+ EOS)."""
        return self.vocab_size + 1 + int(self.variable_length)

    @property
    def seq_len(self) -> int:
        """S: decoding positions per chunk (N, plus one for EOS when variable-length)."""
        return self.max_tokens + int(self.variable_length)

    @property
    def mlp_dim(self) -> int:
        """Hidden size of the blocks' MLP."""
        return int(self.mlp_ratio * self.width)

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent field."""
        for name in ("vocab_size", "max_tokens", "n_obs_steps", "width", "depth", "num_heads", "state_hidden",
                     "keypoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PolicyConfig.{name} must be a positive int, got {value!r}.")
        if self.width % self.num_heads:
            raise ValueError(f"PolicyConfig.width ({self.width}) must be divisible by num_heads ({self.num_heads}).")
        if self.obs_dim < 0 or self.num_cameras < 0 or self.num_instructions < 0:
            raise ValueError(f"PolicyConfig.obs_dim ({self.obs_dim}), num_cameras ({self.num_cameras}) and "
                             f"num_instructions ({self.num_instructions}) must be >= 0.")
        if self.obs_dim == 0 and self.num_cameras == 0:
            raise ValueError("PolicyConfig needs an observation: set obs_dim > 0 (state) and/or num_cameras > 0 "
                             "(images).")
        if self.num_cameras and len(self.image_shape) != 3:
            raise ValueError(f"PolicyConfig.image_shape must be (height, width, channels) when num_cameras > 0, "
                             f"got {self.image_shape}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PolicyConfig.dropout must be in [0, 1), got {self.dropout}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"PolicyConfig.dtype must be one of {DTYPES}, got {self.dtype!r}.")



Observation = Mapping[str, jax.Array]  # {"state": (B, K, obs_dim) f32 normalized, "image": (B, K, cams, h, w, c)
#                                         uint8, "language": (B,) int32 instruction ids}
LayerKV = tuple[jax.Array, jax.Array]


class TokenPolicyModel(nn.Module):
    """The policy network. Methods (all take the "params" collection):

      __call__(obs, inputs, deterministic) -> logits (B, S, embed_size) float32   (teacher forcing)
      encode(obs, deterministic) -> memory (B, M, E) float32
      memory_kv(memory) -> per-block cross-attention (k, v), each (B, M, heads, hd)
      decode_step(ids (B,) int32, pos int32 scalar, cache, mem_kv) -> (logits (B, embed_size) f32, cache)
    `cache` is a per-block tuple of (k, v) arrays (B, S, heads, hd), preallocated by `init_cache`.
    RNG stream "dropout" when deterministic=False.
    """

    config: PolicyConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        self.state_encoder = StateEncoder(c.width, c.state_hidden, dtype=dtype) if c.obs_dim else None
        self.image_encoder = (ImageEncoder(c.width, c.conv_channels, c.keypoints, dtype=dtype)
                              if c.num_cameras else None)
        self.instruction_encoder = (InstructionEncoder(c.num_instructions, c.width) if c.num_instructions
                                    else None)
        self.token_embed = nn.Embed(c.embed_size, c.width, embedding_init=nn.initializers.normal(0.02),
                                    param_dtype=jnp.float32)
        self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02), (c.seq_len, c.width), jnp.float32)
        self.blocks = [PolicyBlock(c.width, c.num_heads, c.mlp_dim, c.dropout, dtype=dtype, name=f"block_{i}")
                       for i in range(c.depth)]
        self.memory_norm = RMSNorm()
        self.final_norm = RMSNorm()
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

    def memory_kv(self, memory: jax.Array) -> tuple[LayerKV, ...]:
        """Cross-attention keys/values of every block, computed once per observation."""
        dtype = jnp.dtype(self.config.dtype)
        return tuple(block.memory_kv(memory.astype(dtype)) for block in self.blocks)

    def _logits(self, h: jax.Array) -> jax.Array:
        return self.token_embed.attend(self.final_norm(h)).astype(jnp.float32)

    def __call__(self, obs: Observation, inputs: jax.Array, deterministic: bool = True) -> jax.Array:
        """Teacher-forced logits. inputs: (B, S') int32 ids (S' <= S, starting with BOS) -> (B, S', embed_size)."""
        mem_kv = self.memory_kv(self.encode(obs, deterministic))
        length = inputs.shape[1]
        x = self.token_embed(inputs).astype(jnp.float32) + self.pos_embed[:length]
        x = self.drop(x, deterministic=deterministic)
        mask = jnp.tril(jnp.ones((length, length), bool))
        for block, kv in zip(self.blocks, mem_kv):
            x = block(x, kv, mask, deterministic)
        return self._logits(x)

    def decode_step(self, ids: jax.Array, pos: jax.Array, cache: tuple[LayerKV, ...],
                    mem_kv: tuple[LayerKV, ...]) -> tuple[jax.Array, tuple[LayerKV, ...]]:
        """One decoding position: ids (B,) int32 are the inputs at `pos` -> logits (B, embed_size) for pos."""
        x = self.token_embed(ids[:, None]).astype(jnp.float32)
        x = x + jax.lax.dynamic_slice_in_dim(self.pos_embed, pos, 1, axis=0)[None]
        new_cache = []
        for block, layer_cache, kv in zip(self.blocks, cache, mem_kv):
            x, layer_cache = block.step(x, pos, layer_cache, kv)
            new_cache.append(layer_cache)
        return self._logits(x)[:, 0], tuple(new_cache)


def init_cache(config: PolicyConfig, batch: int) -> tuple[LayerKV, ...]:
    """Zero KV cache: per block (k, v), each (batch, S, heads, head_dim) in the compute dtype."""
    head_dim = config.width // config.num_heads
    shape = (batch, config.seq_len, config.num_heads, head_dim)
    dtype = jnp.dtype(config.dtype)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.depth))


def dummy_observation(config: PolicyConfig, batch: int = 1) -> dict[str, jax.Array]:
    """Zero observation dict of the right shapes (for init and shape checks)."""
    obs = {}
    if config.obs_dim:
        obs["state"] = jnp.zeros((batch, config.n_obs_steps, config.obs_dim), jnp.float32)
    if config.num_cameras:
        obs["image"] = jnp.zeros((batch, config.n_obs_steps, config.num_cameras) + config.image_shape, jnp.uint8)
    if config.num_instructions:
        obs["language"] = jnp.zeros((batch,), jnp.int32)
    return obs


def init_params(config: PolicyConfig, rng: jax.Array) -> dict:
    """Fresh float32 params of `TokenPolicyModel(config)`."""
    inputs = jnp.zeros((1, config.seq_len), jnp.int32)
    return TokenPolicyModel(config).init({"params": rng}, dummy_observation(config), inputs)["params"]


def abstract_params(config: PolicyConfig) -> Any:
    """ShapeDtypeStruct tree of the params (no computation)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def param_count(params: Any) -> int:
    """Number of scalars in a param tree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def teacher_forcing(tokens: jax.Array, lengths: jax.Array, config: PolicyConfig
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs, targets and loss mask of a batch of tokenized chunks.

    Args:
      tokens: (B, N) int32, PAD_ID (-1) past each length.
      lengths: (B,) int32 in 1..N (= N for fixed-length tokenizers).
    Returns:
      inputs (B, S) int32 (BOS then the tokens; padding replaced by id 0, never attended by earlier positions),
      targets (B, S) int32 (EOS at position `length` for variable-length tokenizers), mask (B, S) float32.
    """
    b, n = tokens.shape
    if n != config.max_tokens:
        raise ValueError(f"tokens have width {n} but the policy expects max_tokens={config.max_tokens}.")
    pos = jnp.arange(config.seq_len)[None, :]
    valid = jnp.arange(n)[None, :] < lengths[:, None]
    clean = jnp.where(valid, tokens, 0).astype(jnp.int32)
    bos = jnp.full((b, 1), config.bos_id, jnp.int32)
    if config.variable_length:
        inputs = jnp.concatenate([bos, clean], axis=1)  # (B, N + 1)
        targets = jnp.concatenate([clean, jnp.zeros((b, 1), jnp.int32)], axis=1)
        targets = jnp.where(pos == lengths[:, None], config.eos_id, targets)
        mask = pos <= lengths[:, None]
    else:
        inputs = jnp.concatenate([bos, clean[:, :-1]], axis=1)  # (B, N)
        targets = clean
        mask = pos < lengths[:, None]
    return inputs, targets, mask.astype(jnp.float32)
