"""Smoke tests of the worked example experiments/examples/vla_integration.py (a few steps, small data) and of its
prompt encoding in experiments/examples/tiny_lm.py."""

import json
import math

import numpy as np
import pytest

from oat_helpers import random_params
from oat_jax import OATConfig, OATTokenizer
from experiments.examples import tiny_lm, vla_integration

# The embedded dataset has 4-D actions; a small random tokenizer with non-zero heads (distinct tokens per chunk).
CONFIG = OATConfig(action_dim=4, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=32, enc_depth=1, enc_heads=2,
                   dec_width=32, dec_depth=1, dec_heads=2, dec_ffn_dim=64)


def _check(metrics, num_tokens):
    assert metrics["lm_loss_last"] < metrics["lm_loss_first"]  # the LM learns the action tokens
    assert 0.0 <= metrics["valid_span_fraction"] <= 1.0
    for k in range(1, num_tokens + 1):
        assert math.isfinite(metrics[f"mse_policy_k{k}"]) and math.isfinite(metrics[f"mse_tokenizer_k{k}"])


def test_example_with_a_given_tokenizer(tmp_path):
    path = OATTokenizer(CONFIG, random_params(CONFIG)).save(str(tmp_path / "tok"))
    metrics = vla_integration.run(tokenizer=path, workdir=str(tmp_path / "vla"), lm_steps=40, batch_size=32,
                                  max_chunks=256)
    _check(metrics, CONFIG.num_tokens)
    assert metrics["lm_vocab_size"] > CONFIG.vocab_size
    with open(tmp_path / "vla" / "vla_metrics.json") as f:
        assert json.load(f) == metrics


@pytest.mark.slow
def test_example_trains_its_own_tokenizer(tmp_path):
    metrics = vla_integration.run(workdir=str(tmp_path / "vla"), lm_steps=40, batch_size=32, tokenizer_steps=20,
                                  max_chunks=256)
    _check(metrics, 4)
    assert (tmp_path / "vla" / "tokenizer_run" / "tokenizer" / "config.json").exists()


def test_prompt_encoding():
    state = np.linspace(0.0, 1.0, 2 * 39, dtype=np.float32).reshape(2, 39)
    prompter = tiny_lm.PromptTokenizer(["pick place", "push"], state)
    prompts = prompter.encode(["push place", "open"], state)  # "open" is unknown -> PAD
    assert prompts.shape == (2, prompter.length) and prompts.dtype == np.int32
    assert (prompts[:, 0] == tiny_lm.BOS).all() and (prompts[:, -1] == tiny_lm.ACTION).all()
    assert prompts[1, 1] == tiny_lm.PAD and 0 <= prompts.min() and prompts.max() < prompter.vocab_size
