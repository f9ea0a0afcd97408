"""LM vocabulary mapping of action tokens and extraction of generated action spans (oat_jax.lm_vocab)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oat_jax.lm_vocab import ActionVocab, extract_action_tokens, from_lm_ids, to_lm_ids

N = 8  # tokens per chunk


def test_contiguous_round_trips_every_token_and_rejects_other_ids():
    vocab = ActionVocab.contiguous(offset=300, size=1000, lm_vocab_size=1400)
    tokens = np.arange(1000)
    ids = np.asarray(to_lm_ids(tokens, vocab))
    np.testing.assert_array_equal(ids, 300 + tokens)
    back, valid = from_lm_ids(ids, vocab)
    np.testing.assert_array_equal(back, tokens)
    assert bool(valid.all())
    others = np.array([0, 299, 1300, 1399, -1])
    back, valid = from_lm_ids(others, vocab)
    assert not bool(valid.any()) and np.all(np.asarray(back) == 0)
    assert vocab.lm_range == (300, 1300)


def test_openpi_preset_reproduces_openpi_mapping_for_paligemma_vocab():
    vocab = ActionVocab.openpi(size=1000)  # PaliGemma: 257,152 ids, the last 128 reserved
    tokens = np.arange(1000)
    openpi_ids = 257_152 - 1 - 128 - tokens  # openpi: vocab_size - 1 - fast_skip_tokens - token
    np.testing.assert_array_equal(to_lm_ids(tokens, vocab), openpi_ids)
    back, valid = from_lm_ids(openpi_ids, vocab)
    np.testing.assert_array_equal(back, tokens)
    assert bool(valid.all())
    assert vocab.lm_range == (256_024, 257_024)
    reserved = np.arange(257_024, 257_152)  # openpi's special tokens are never action ids
    assert not bool(from_lm_ids(reserved, vocab)[1].any())
    assert not bool(from_lm_ids(np.array([256_023, 0, 1]), vocab)[1].any())


def test_vocab_validation():
    with pytest.raises(ValueError, match="do not fit"):
        ActionVocab.contiguous(offset=500, size=1000, lm_vocab_size=1200)
    with pytest.raises(ValueError, match="size >= 1000"):
        ActionVocab.contiguous(0, 60).check_covers(1000)
    with pytest.raises(ValueError, match="inside the action id range"):
        extract_action_tokens(np.zeros((1, 4), np.int32), ActionVocab.contiguous(10, 60), N, end_ids=(12,))


VOCAB = ActionVocab.contiguous(offset=100, size=60, lm_vocab_size=200)
EOS, BAR = 1, 7


def _row(tokens, tail=()):
    return [100 + t for t in tokens] + list(tail)


@pytest.mark.parametrize("jit", [False, True])
def test_extraction_cases(jit):
    T = 12
    rows = [
        (_row([3, 4, 5], [EOS]), 0),                      # normal span closed by EOS
        (_row([], [EOS]), 0),                             # empty span
        (_row(range(10, 21)), 0),                         # 11 action ids: longer than N, no end marker
        (_row([9, 8], [170, 5]), 0),                      # stops at a non-action text id (170 is outside 100..159)
        ([42, 43, 44] + _row([1, 2], [BAR]), 3),          # span after a text prefix, closed by the second marker
        (_row([0] * 8, [EOS]), 0),                        # exactly N tokens then EOS
        ([42] * 12, 12),                                  # start at the end: empty
    ]
    ids = np.full((len(rows), T), 0, np.int32)
    for b, (row, _) in enumerate(rows):
        ids[b, :len(row)] = row[:T]
    ids[2, 11] = 100 + 21  # the over-long span runs to the end of the array
    starts = np.array([s for _, s in rows], np.int32)
    fn = lambda x, s: extract_action_tokens(x, VOCAB, N, start=s, end_ids=(EOS, BAR))  # noqa: E731
    span = (jax.jit(fn) if jit else fn)(ids, starts)
    expected_tokens = [[3, 4, 5], [], list(range(10, 18)), [9, 8], [1, 2], [0] * 8, []]
    for b, toks in enumerate(expected_tokens):
        np.testing.assert_array_equal(span.tokens[b], toks + [0] * (N - len(toks)))
    np.testing.assert_array_equal(span.span_lengths, [3, 0, 12, 2, 2, 8, 0])
    np.testing.assert_array_equal(span.lengths, [3, 1, 8, 2, 2, 8, 1])
    np.testing.assert_array_equal(span.valid, [True, False, True, True, True, True, False])
    np.testing.assert_array_equal(span.ended, [True, True, False, False, True, True, False])
    assert span.tokens.dtype == jnp.int32 and span.tokens.shape == (7, N)


def test_extracted_span_decodes_with_detokenize_fn_inside_jit():
    from oat_jax import OATTokenizer
    from oat_helpers import TINY, random_params

    tok = OATTokenizer(TINY, random_params(TINY))
    vocab = ActionVocab.contiguous(offset=100, size=tok.vocab_size)
    generated = np.array([_row([5, 17, 33], [EOS] + [0] * 8), _row(range(11), [EOS])], np.int32)

    @jax.jit
    def decode(params, ids):
        span = extract_action_tokens(ids, vocab, tok.num_tokens, end_ids=(EOS,))
        return tok.detokenize_fn(params, span.tokens, span.lengths), span.valid

    actions, valid = decode(tok.params, generated)
    expected, expected_valid = tok.detokenize(np.array([[5, 17, 33, -1, -1, -1, -1, -1], list(range(8))]))
    assert expected_valid.all()
    np.testing.assert_allclose(actions[0], expected[0], atol=1e-6)
    np.testing.assert_allclose(actions[1], expected[1], atol=1e-6)
    np.testing.assert_allclose(actions[0], tok.detokenize_fn(tok.params, np.array([5, 17, 33])), atol=1e-6)
    assert bool(valid.all())
