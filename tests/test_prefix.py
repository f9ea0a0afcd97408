"""Prefix detokenization: slicing == lengths == mask-vector decoding, one compilation for every k, totality."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from oat_helpers import TINY, random_params, smooth_actions

from oat_jax import Normalizer, OATTokenizer, fsq
from oat_jax.decoder import OATDecoder

N = TINY.num_tokens


@functools.lru_cache(maxsize=None)
def _normalizer():
    return Normalizer.fit(smooth_actions(64, TINY.horizon, TINY.action_dim) * 3.0 + 1.0, "limits")


def _tokenizer():
    """A tokenizer with non-zero random weights (its jitted functions are shared with equal tokenizers)."""
    return OATTokenizer(TINY, random_params(TINY), _normalizer())


def _tokens(batch, seed=0):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, size=(batch, N))


def _detokenize(tok, tokens, lengths=None):
    """tok.detokenize's actions, checking that every example is valid (in-range ids, lengths >= 1)."""
    actions, valid = tok.detokenize(tokens, lengths)
    assert valid.shape == (len(tokens),) and valid.all()
    return actions


@jax.jit
def _decode_with_mask_vector(params, tokens, k):
    """Reference path: decode all N tokens, then overwrite memory slots >= k with the learned mask vector.
    Returns normalized actions (B, H, D_a)."""
    decoder, dec_params = OATDecoder(TINY), {"params": params["decoder"]}
    codes = fsq.indices_to_codes(tokens, TINY.levels)
    memory = decoder.apply(dec_params, codes, jnp.full((tokens.shape[0],), N), method=OATDecoder.memory)
    memory = jnp.where((jnp.arange(N) >= k)[None, :, None], params["decoder"]["mask_token"], memory)
    queries = decoder.apply(dec_params, tokens.shape[0], method=OATDecoder.queries)
    return decoder.apply(dec_params, queries, memory, method=OATDecoder.transform)


def test_prefix_slice_equals_lengths_equals_mask_vector_decoding():
    tok, tokens = _tokenizer(), _tokens(6)
    outputs = []
    for k in range(1, N + 1):
        sliced = _detokenize(tok, tokens[:, :k])
        np.testing.assert_array_equal(sliced, _detokenize(tok, tokens, lengths=k))
        reference = tok.normalizer.unnormalize(_decode_with_mask_vector(tok.params, jnp.asarray(tokens), k))
        np.testing.assert_allclose(sliced, reference, rtol=1e-5, atol=1e-5)
        outputs.append(sliced)
    # Each extra token changes the decoded chunk (the prefix really is applied).
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(outputs, outputs[1:]))


def test_ids_after_the_prefix_are_ignored():
    tok, tokens = _tokenizer(), _tokens(4)
    garbage = tokens.copy()
    garbage[:, 3:] = _tokens(4, seed=1)[:, 3:]
    detok = jax.jit(tok.detokenize_fn)
    np.testing.assert_array_equal(detok(tok.params, tokens, 3), detok(tok.params, garbage, 3))
    np.testing.assert_array_equal(_detokenize(tok, tokens, lengths=3), _detokenize(tok, garbage, lengths=3))
    assert np.abs(np.asarray(detok(tok.params, tokens, 4) - detok(tok.params, garbage, 4))).max() > 1e-4


def test_mixed_prefix_lengths_in_one_batch_match_single_length_calls():
    tok, tokens = _tokenizer(), _tokens(N)
    lengths = np.arange(1, N + 1)[::-1].copy()
    mixed = _detokenize(tok, tokens, lengths=lengths)
    for i, k in enumerate(lengths):
        np.testing.assert_allclose(mixed[i], _detokenize(tok, tokens[i:i + 1, :k])[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mixed[i], tok.detokenize_fn(tok.params, tokens[i, :k]), rtol=1e-5, atol=1e-5)


def test_one_trace_serves_every_prefix_length():
    tok, tokens = _tokenizer(), _tokens(5)
    tok.detokenize(tokens)
    traced_before = tok.trace_counts["detokenize"]  # shared by equal tokenizers, so maybe traced by earlier tests
    for k in range(1, N + 1):
        tok.detokenize(tokens[:, :k])
        tok.detokenize(tokens, lengths=k)
        tok.detokenize(tokens, lengths=np.full(5, k, np.int32))
    tok.detokenize(tokens, lengths=np.array([1, 3, 8, 2, 5]))
    assert tok.trace_counts["detokenize"] == traced_before

    traces = []

    @jax.jit
    def user_detokenize(params, padded_tokens, lengths):  # inside a user's jit, params passed explicitly
        traces.append(1)
        return tok.detokenize_fn(params, padded_tokens, lengths)

    for k in range(1, N + 1):
        user_detokenize(tok.params, jnp.asarray(tokens), jnp.full((5,), k))
    assert len(traces) == 1


def test_detokenize_vmaps_over_prefix_length():
    tok, tokens = _tokenizer(), _tokens(3)
    all_k = jax.jit(jax.vmap(lambda k: tok.detokenize_fn(tok.params, tokens, k)))(jnp.arange(1, N + 1))
    assert all_k.shape == (N, 3, TINY.horizon, TINY.action_dim)
    for k in (1, 4, N):
        np.testing.assert_allclose(all_k[k - 1], _detokenize(tok, tokens[:, :k]), rtol=1e-5, atol=1e-5)


@functools.lru_cache(maxsize=None)
def _jitted_detokenize_fn():
    tok = _tokenizer()
    return tok, jax.jit(tok.detokenize_fn)


@settings(max_examples=3, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_total_decodability_of_random_token_sequences(seed):
    """10,000 uniformly random sequences of random prefix lengths (plus the extreme ids) per example, one call."""
    tok, detokenize = _jitted_detokenize_fn()
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, TINY.vocab_size, size=(10_000, N))
    tokens[0], tokens[1] = 0, TINY.vocab_size - 1
    lengths = rng.integers(1, N + 1, size=10_000)
    actions = np.asarray(detokenize(tok.params, tokens, lengths))
    assert actions.shape == (10_000, TINY.horizon, TINY.action_dim)
    assert np.all(np.isfinite(actions))
    assert np.ptp(actions, axis=0).max() > 0  # not a constant function
