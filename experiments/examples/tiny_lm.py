"""The language-model side of the VLA example (experiments/examples/vla_integration.py): prompt encoding, a tiny
decoder-only transformer and its teacher-forced training loop. Nothing here knows about OAT; the example appends
the action ids (mapped with `oat_jax.lm_vocab`) after the prompt.

Not runnable on its own; launch the example: `python -m experiments.examples.vla_integration`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

SPECIALS = ("<pad>", "<bos>", "<eos>", "Action:")
PAD, BOS, EOS, ACTION = range(len(SPECIALS))
STATE_DIMS = (0, 1, 2, 3, 4, 5, 6, 36, 37, 38)  # Meta-World state: hand xyz, gripper, object xyz, goal xyz
STATE_BINS = 32  # bins per state value in the prompt
MAX_WORDS = 3  # instruction words kept in the prompt (the MT10 instructions have at most 3)


class PromptTokenizer:
    """Text ids: the specials, one id per instruction word, then STATE_BINS ids per state value.

    Built from the training split: `train_language` (M,) strings and `train_state` (M, 39) float32 (the bin edges
    span each state value's training range). `vocab_size` counts the text ids; `length` is the prompt length P.
    """

    def __init__(self, train_language, train_state: np.ndarray):
        words = sorted({w for text in train_language for w in text.split()})
        self.word_ids = {w: len(SPECIALS) + i for i, w in enumerate(words)}
        self.state_offset = len(SPECIALS) + len(words)
        values = train_state[:, STATE_DIMS]
        self.low, self.high = values.min(0), values.max(0)
        self.vocab_size = self.state_offset + STATE_BINS * len(STATE_DIMS)
        self.length = 1 + MAX_WORDS + len(STATE_DIMS) + 1

    def encode(self, language, state: np.ndarray) -> np.ndarray:
        """language (M,) strings, state (M, 39) float32 -> (M, P) int32 prompts: BOS, words (PAD-padded), state
        bins, "Action:". Unknown words become PAD."""
        prompts = np.full((len(language), self.length), PAD, np.int32)
        prompts[:, 0] = BOS
        for i, text in enumerate(language):
            ids = [self.word_ids.get(w, PAD) for w in text.split()][:MAX_WORDS]
            prompts[i, 1:1 + len(ids)] = ids
        scaled = (state[:, STATE_DIMS] - self.low) / np.maximum(self.high - self.low, 1e-6)
        bins = np.clip((scaled * STATE_BINS).astype(np.int32), 0, STATE_BINS - 1)
        prompts[:, 1 + MAX_WORDS:-1] = self.state_offset + STATE_BINS * np.arange(len(STATE_DIMS)) + bins
        prompts[:, -1] = ACTION
        return prompts


class Block(nn.Module):
    """Pre-norm causal self-attention + GELU MLP: (B, T, width) float32 -> (B, T, width) float32."""

    heads: int

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x), mask=mask)
        h = nn.Dense(4 * x.shape[-1])(nn.LayerNorm()(x))
        return x + nn.Dense(x.shape[-1])(nn.gelu(h))


class TinyLM(nn.Module):
    """Decoder-only transformer LM with tied embeddings: ids (B, T) int32, T <= max_len -> logits (B, T, vocab_size)
    float32."""

    vocab_size: int
    max_len: int
    width: int = 64
    depth: int = 2
    heads: int = 4

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(self.vocab_size, self.width)
        pos = self.param("pos", nn.initializers.normal(0.02), (self.max_len, self.width))
        x = embed(ids) + pos[:ids.shape[1]]
        for _ in range(self.depth):
            x = Block(self.heads)(x)
        return embed.attend(nn.LayerNorm()(x))


def train_lm(lm: TinyLM, sequences: np.ndarray, prompt_len: int, steps: int, batch_size: int, lr: float,
             seed: int) -> tuple[dict, list[float]]:
    """Teacher-forced cross-entropy on the ids after the prompt (the action ids and EOS), AdamW with warmup + cosine.

    Args:
      lm: the model; its max_len must be >= T - 1.
      sequences: (M, T) int32, prompt (first `prompt_len` ids) then targets.
      steps, batch_size, lr, seed: optimizer steps, rows per step (drawn with replacement), peak learning rate,
        init / batch-order seed.
    Returns:
      (params, the loss of every step as Python floats).
    """
    params = lm.init(jax.random.PRNGKey(seed), jnp.asarray(sequences[:1, :-1]))["params"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 10 + 1), steps), weight_decay=0.01)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = lm.apply({"params": p}, batch[:, :-1])[:, prompt_len - 1:]
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, prompt_len:]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        batch = sequences[rng.integers(0, len(sequences), batch_size)]
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    return params, losses
