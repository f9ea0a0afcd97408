r"""Worked example: a tiny JAX language model learns to emit OAT action tokens, and its generated prefix is decoded
to actions, all inside one jitted function (the way a PaliGemma-style VLA such as openpi's pi0-FAST uses FAST).

  python -m experiments.examples.vla_integration            # ~3 min on 2 CPU cores, a small tokenizer trained first
  python -m experiments.examples.vla_integration --tokenizer=runs/oat_metaworld   # or any exported tokenizer dir
Options: --workdir (default runs/vla_example), --lm_steps, --batch_size, --lr, --tokenizer_steps, --max_chunks, --seed.

Steps (the data in vla_data.py, the LM in tiny_lm.py, the OAT-specific glue here):
1. Tokenizer: `oat_jax.load_pretrained(--tokenizer)`; without --tokenizer a small one (the `runlocal` model of
   experiments/configs/oat.py: H=8, N=4, vocabulary 36) is trained on the embedded dataset into
   <workdir>/tokenizer_run (reused when present).
2. Data: every chunk of the embedded Meta-World dataset (data_pipelines.loader, with the language instruction and
   the state of the chunk's first step). Prompt, openpi style: [BOS] task words, 10 state values discretized into
   32 bins each, then an "Action:" marker. Target: the chunk's OAT tokens (`tokenize_fn`) mapped into the LM
   vocabulary (`oat_jax.lm_vocab.ActionVocab.contiguous`, right after the text ids), then EOS.
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

import jax
import jax.numpy as jnp
import numpy as np

from experiments.examples.tiny_lm import EOS, PAD, PromptTokenizer, TinyLM, train_lm
from experiments.examples.vla_data import load_chunks, tokenize_all, train_tokenizer
from oat_jax import load_pretrained
from oat_jax.lm_vocab import ActionVocab, extract_action_tokens, to_lm_ids


def make_policy(lm: TinyLM, detokenize_fn, vocab: ActionVocab, num_tokens: int):
    """The VLA policy as one jitted function, with the K of anytime decoding traced (one compile for every K).

    policy(lm_params, tok_params, prompts (B, P) int32, k int) -> (actions (B, H, D_a) float32 decoded from the
    first min(span length, k) generated action tokens, the `oat_jax.lm_vocab.ActionSpan` of the generated ids).
    """

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


def run(tokenizer: str | None = None, workdir: str = "runs/vla_example", lm_steps: int = 800,
        batch_size: int = 128, lr: float = 3e-3, tokenizer_steps: int = 400, max_chunks: int = 0,
        seed: int = 0) -> dict:
    """The whole example (see the module docstring); returns the metrics it writes to <workdir>/vla_metrics.json
    (floats and ints: LM losses, MSEs per K, span validity, token accuracy, seconds)."""
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
    train_tokens = tokenize_all(tokenize_fn, tok_params, train["actions"])
    sequences = np.concatenate([prompter.encode(train["language"], train["state"]),
                                np.asarray(to_lm_ids(train_tokens, vocab)),
                                np.full((len(train_tokens), 1), EOS, np.int32)], axis=1)
    lm = TinyLM(vocab_size=lm_vocab_size, max_len=sequences.shape[1])
    lm_params, losses = train_lm(lm, sequences, prompter.length, lm_steps, batch_size, lr, seed)

    policy = make_policy(lm, detokenize_fn, vocab, c.num_tokens)
    prompts = jnp.asarray(prompter.encode(val["language"], val["state"]))
    truth = val["actions"]
    val_tokens = tokenize_all(tokenize_fn, tok_params, truth)
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
