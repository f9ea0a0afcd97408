r"""Worked example: a tiny JAX language model learns to emit OAT action tokens, and its generated prefix is decoded
to actions, all inside one jitted function (the way a PaliGemma-style VLA such as openpi's pi0-FAST uses FAST).

  python -m experiments.examples.vla_integration            # ~3 min on 2 CPU cores, a small tokenizer trained first
  python -m experiments.examples.vla_integration --tokenizer=runs/oat_metaworld   # or any exported tokenizer dir
Options: --workdir (default runs/vla_example), --lm_steps, --batch_size, --lr, --tokenizer_steps, --max_chunks, --seed.

Steps:
1. Tokenizer: `oat_jax.load_pretrained(--tokenizer)`; without --tokenizer a small one (the `runlocal` model of
   experiments/configs/oat.py: H=8, N=4, vocabulary 36) is trained on the embedded dataset into
   <workdir>/tokenizer_run (reused when present).
2. Data: every chunk of the embedded Meta-World dataset (data_pipelines.loader, with the language instruction and
   the state of the chunk's first step). Prompt, openpi style: [BOS] task words, 10 state values discretized into
   32 bins each, then an "Action:" marker. Target: the chunk's OAT tokens mapped into the LM vocabulary
   (`ActionVocab.contiguous`, right after the text ids), then EOS.
3. LM: a 2-layer causal transformer (flax linen, tied embeddings) trained with cross-entropy on the target ids.
4. Policy, one `jax.jit`: greedy generation of N+1 ids in a `lax.fori_loop` over a fixed buffer (a real VLA would
   use a KV cache) -> `extract_action_tokens` (stops at EOS or any non-action id; invalid spans are flagged) ->
   `detokenize_fn` of the first K tokens (anytime decoding, K = 1..N).
Prints and writes <workdir>/vla_metrics.json: held-out action MSE of the policy for each K, next to the tokenizer's
own reconstruction MSE (the best the policy can reach) and the MSE of always predicting the mean training chunk.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import EMBEDDED_DATASET_DIR, loader
from oat_jax import load_pretrained
from oat_jax.lm_vocab import ActionVocab, extract_action_tokens, to_lm_ids

SPECIALS = ("<pad>", "<bos>", "<eos>", "Action:")
PAD, BOS, EOS, ACTION = range(len(SPECIALS))
STATE_DIMS = (0, 1, 2, 3, 4, 5, 6, 36, 37, 38)  # Meta-World state: hand xyz, gripper, object xyz, goal xyz
STATE_BINS = 32  # bins per state value in the prompt
MAX_WORDS = 3  # instruction words kept in the prompt (the MT10 instructions have at most 3)


# ----------------------------------------------------------------------------------------------- data
def load_chunks(horizon: int, split: str, limit: int = 0) -> dict:
    """All chunks of a split of the embedded dataset as numpy: actions (M, H, D_a), state (M, 39), language."""
    spec = loader.DatasetSpec(path=EMBEDDED_DATASET_DIR, obs_keys=("observation/state",))
    ds = loader.make_chunk_dataset(spec, split=split, horizon=horizon, batch_size=1024, shuffle=False, repeat=False,
                                   n_obs_steps=1, with_language=True, drop_remainder=False)
    parts = {"actions": [], "state": [], "language": []}
    for batch in ds.as_numpy_iterator():
        parts["actions"].append(batch["actions"])
        parts["state"].append(batch["observation"]["state"][:, 0])
        parts["language"].extend(s.decode() for s in batch["language"])
    chunks = {k: np.concatenate(v) if k != "language" else np.array(v) for k, v in parts.items()}
    if limit:
        keep = np.random.default_rng(0).permutation(len(chunks["actions"]))[:limit]
        chunks = {k: v[keep] for k, v in chunks.items()}
    return chunks


class PromptTokenizer:
    """Text ids: the specials, one id per instruction word, then STATE_BINS ids per state value."""

    def __init__(self, train_language, train_state: np.ndarray):
        words = sorted({w for text in train_language for w in text.split()})
        self.word_ids = {w: len(SPECIALS) + i for i, w in enumerate(words)}
        self.state_offset = len(SPECIALS) + len(words)
        values = train_state[:, STATE_DIMS]
        self.low, self.high = values.min(0), values.max(0)
        self.vocab_size = self.state_offset + STATE_BINS * len(STATE_DIMS)
        self.length = 1 + MAX_WORDS + len(STATE_DIMS) + 1

    def encode(self, language, state: np.ndarray) -> np.ndarray:
        """-> (M, P) int32 prompts: BOS, words (PAD-padded), state bins, "Action:"."""
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


# ----------------------------------------------------------------------------------------------- model
class Block(nn.Module):
    """Pre-norm causal self-attention + GELU MLP."""

    heads: int

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x), mask=mask)
        h = nn.Dense(4 * x.shape[-1])(nn.LayerNorm()(x))
        return x + nn.Dense(x.shape[-1])(nn.gelu(h))


class TinyLM(nn.Module):
    """Decoder-only transformer LM: ids (B, T) int32 -> logits (B, T, vocab_size) float32."""

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
    """Teacher-forced cross-entropy on the ids after the prompt (the action ids and EOS)."""
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


def make_policy(lm: TinyLM, detokenize_fn, vocab: ActionVocab, num_tokens: int):
    """policy(lm_params, tok_params, prompts (B, P), k) -> (actions (B, H, D_a), ActionSpan); one jit, k traced."""

    @jax.jit
    def policy(lm_params, tok_params, prompts, k):
        batch, prompt_len = prompts.shape
        num_new = num_tokens + 1  # N action ids, then EOS
        buffer = jnp.concatenate([prompts, jnp.full((batch, num_new), PAD, jnp.int32)], axis=1)

        def generate_one(i, buf):
            logits = lm.apply({"params": lm_params}, buf)
            next_id = jnp.argmax(logits[:, prompt_len - 1 + i], axis=-1).astype(jnp.int32)
            return buf.at[:, prompt_len + i].set(next_id)

        generated = jax.lax.fori_loop(0, num_new, generate_one, buffer)[:, prompt_len:]
        span = extract_action_tokens(generated, vocab, num_tokens, end_ids=(EOS,))
        actions = detokenize_fn(tok_params, span.tokens, jnp.minimum(span.lengths, k))
        return actions, span

    return policy


# ----------------------------------------------------------------------------------------------- driver
def train_tokenizer(directory: str, steps: int) -> str:
    """Trains the small `runlocal` tokenizer on the embedded dataset (unless `directory` already holds one)."""
    if os.path.isdir(os.path.join(directory, "tokenizer")):
        return directory
    from experiments.configs import oat as oat_configs
    from oat_jax.training import train_and_evaluate
    config = oat_configs.get_config("runlocal")
    config.train.update(num_steps=steps, batch_size=64, eval_every=steps, log_every=max(steps // 4, 1),
                        progress_bar=False)
    config.optim.update(schedule="cosine", warmup_steps=20)
    config.checkpoint.every = steps
    train_and_evaluate(config, directory)
    return directory


def _tokenize_all(tokenize_fn, params, actions: np.ndarray, batch: int = 1024) -> np.ndarray:
    fn = jax.jit(tokenize_fn)
    out = [np.asarray(fn(params, actions[i:i + batch])) for i in range(0, len(actions), batch)]
    return np.concatenate(out)


def run(tokenizer: str | None = None, workdir: str = "runs/vla_example", lm_steps: int = 800,
        batch_size: int = 128, lr: float = 3e-3, tokenizer_steps: int = 400, max_chunks: int = 0,
        seed: int = 0) -> dict:
    """The whole example (see the module docstring); returns the metrics it writes to <workdir>/vla_metrics.json."""
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    path = tokenizer or train_tokenizer(os.path.join(workdir, "tokenizer_run"), tokenizer_steps)
    tok, tok_params, tokenize_fn, detokenize_fn = load_pretrained(path)
    c = tok.config
    train = load_chunks(c.horizon, "train", max_chunks)
    val = load_chunks(c.horizon, "val", max_chunks)
    prompter = PromptTokenizer(train["language"], train["state"])
    vocab = ActionVocab.contiguous(offset=prompter.vocab_size, size=c.vocab_size)
    lm_vocab_size = prompter.vocab_size + c.vocab_size
    train_tokens = _tokenize_all(tokenize_fn, tok_params, train["actions"])
    sequences = np.concatenate([prompter.encode(train["language"], train["state"]),
                                np.asarray(to_lm_ids(train_tokens, vocab)),
                                np.full((len(train_tokens), 1), EOS, np.int32)], axis=1)
    lm = TinyLM(vocab_size=lm_vocab_size, max_len=sequences.shape[1])
    lm_params, losses = train_lm(lm, sequences, prompter.length, lm_steps, batch_size, lr, seed)

    policy = make_policy(lm, detokenize_fn, vocab, c.num_tokens)
    prompts = jnp.asarray(prompter.encode(val["language"], val["state"]))
    truth = val["actions"]
    val_tokens = _tokenize_all(tokenize_fn, tok_params, truth)
    recon = jax.jit(detokenize_fn)
    metrics = {"lm_loss_first": losses[0], "lm_loss_last": float(np.mean(losses[-20:])),
               "val_chunks": int(len(truth)), "lm_vocab_size": lm_vocab_size,
               "mse_mean_chunk": float(np.mean((truth - train["actions"].mean(0)) ** 2))}
    for k in range(1, c.num_tokens + 1):
        actions, span = policy(lm_params, tok_params, prompts, k)
        metrics[f"mse_policy_k{k}"] = float(np.mean((np.asarray(actions) - truth) ** 2))
        metrics[f"mse_tokenizer_k{k}"] = float(np.mean((np.asarray(recon(tok_params, val_tokens, k)) - truth) ** 2))
    metrics["valid_span_fraction"] = float(np.mean(span.valid))
    metrics["token_accuracy"] = float(np.mean(np.asarray(span.tokens) == val_tokens))
    metrics["seconds"] = time.time() - start
    with open(os.path.join(workdir, "vla_metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    return metrics


def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir or training workdir (default: train one)")
    parser.add_argument("--workdir", default="runs/vla_example", help="outputs (and the trained tokenizer)")
    parser.add_argument("--lm_steps", type=int, default=800, help="LM training steps")
    parser.add_argument("--batch_size", type=int, default=128, help="LM batch size")
    parser.add_argument("--lr", type=float, default=3e-3, help="LM peak learning rate")
    parser.add_argument("--tokenizer_steps", type=int, default=400, help="steps of the tokenizer trained first")
    parser.add_argument("--max_chunks", type=int, default=0, help="at most this many chunks per split (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="LM init and batch order")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    metrics = run(args.tokenizer, args.workdir, args.lm_steps, args.batch_size, args.lr, args.tokenizer_steps,
                  args.max_chunks, args.seed)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
