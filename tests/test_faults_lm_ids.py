"""Fault injection, LM ids: float ids are refused (not truncated into action ids), int64 ids beyond int32 are
refused (not wrapped into the action range), and an empty generation is an empty span."""

import jax
import numpy as np
import pytest

from oat_jax.lm_vocab import ActionVocab, extract_action_tokens, from_lm_ids

VOCAB = ActionVocab.contiguous(offset=100, size=1000)


def test_float_ids_are_refused_not_truncated():
    with pytest.raises(ValueError, match="integer ids, got dtype float"):
        extract_action_tokens(np.array([[100.7, 101.2]]), VOCAB, num_tokens=4)
    with pytest.raises(ValueError, match="integer ids"):
        from_lm_ids(np.array([150.5]), VOCAB)


def test_int64_ids_beyond_int32_are_refused_not_wrapped():
    wraps_to_action = np.int64(2 ** 32 + 150)  # int32(this) == 150, an action id
    with pytest.raises(ValueError, match="outside int32"):
        extract_action_tokens(np.array([[wraps_to_action, 101]], np.int64), VOCAB, num_tokens=4)


def test_empty_generation_is_an_empty_span_and_jit_still_works():
    span = extract_action_tokens(np.zeros((3, 0), np.int32), VOCAB, num_tokens=4)
    assert span.tokens.shape == (3, 4) and not np.asarray(span.valid).any()
    assert np.asarray(span.lengths).tolist() == [1, 1, 1] and np.asarray(span.span_lengths).tolist() == [0, 0, 0]
    ids = np.array([[100, 105, 7, 101]], np.int32)
    jitted = jax.jit(lambda x: extract_action_tokens(x, VOCAB, num_tokens=4).tokens)
    np.testing.assert_array_equal(jitted(ids), [[0, 5, 0, 0]])
