"""OAT action tokens inside a language model's vocabulary: id mapping and extraction of generated action spans.

A VLA emits action tokens as ordinary LM ids. `ActionVocab` says where the OAT ids [0, num_tokens) live in the LM
vocabulary: either a contiguous ascending range (`ActionVocab.contiguous(offset, size)`: token t -> offset + t) or
the openpi convention (`ActionVocab.openpi()`: ids counted down from the end of the vocabulary, skipping its last
128 reserved special tokens: token t -> vocab_size - 1 - 128 - t, as openpi maps FAST tokens into PaliGemma's
257,152-entry vocabulary).

Everything here is pure jax.numpy with fixed shapes, so it runs inside a user's `jax.jit` / `shard_map`; the
`ActionVocab` and end-marker ids are static Python values.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PALIGEMMA_VOCAB_SIZE = 257_152  # PaliGemma / Gemma SentencePiece vocabulary size used by openpi.
OPENPI_SKIP_TOKENS = 128  # openpi leaves the last 128 ids of the vocabulary (special tokens) unused.


@dataclasses.dataclass(frozen=True)
class ActionVocab:
    """Where the action-token ids [0, size) sit in an LM vocabulary: token t <-> LM id `first_id + step * t`.

    Build it with `contiguous` or `openpi`. Hashable, so it can be a static argument of `jax.jit`.

    Attributes:
      size: number of action tokens (at least the OAT tokenizer's vocab_size, e.g. 1000).
      first_id: LM id of action token 0.
      step: +1 (ids ascend with the token) or -1 (ids descend, the openpi convention).
      lm_vocab_size: size of the LM vocabulary, or None if unknown (then only negative ids are rejected).
    """

    size: int
    first_id: int
    step: int = 1
    lm_vocab_size: int | None = None

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"ActionVocab.size must be >= 1 (the number of action tokens), got {self.size}.")
        if self.step not in (1, -1):
            raise ValueError(f"ActionVocab.step must be +1 or -1, got {self.step}.")
        low, high = self.lm_range
        if low < 0 or (self.lm_vocab_size is not None and high > self.lm_vocab_size):
            raise ValueError(f"Action ids [{low}, {high}) do not fit the LM vocabulary [0, {self.lm_vocab_size}); "
                             f"choose an offset with offset + size <= vocabulary size.")

    @classmethod
    def contiguous(cls, offset: int, size: int, lm_vocab_size: int | None = None) -> "ActionVocab":
        """Action token t <-> LM id offset + t, for t in [0, size)."""
        return cls(size=int(size), first_id=int(offset), step=1, lm_vocab_size=lm_vocab_size)

    @classmethod
    def openpi(cls, size: int = 1000, lm_vocab_size: int = PALIGEMMA_VOCAB_SIZE,
               skip_tokens: int = OPENPI_SKIP_TOKENS) -> "ActionVocab":
        """openpi's convention: token t <-> LM id lm_vocab_size - 1 - skip_tokens - t (the last `skip_tokens` ids
        are reserved special tokens). With the defaults token 0 is id 257,023 and token 999 is id 256,024."""
        return cls(size=int(size), first_id=int(lm_vocab_size) - 1 - int(skip_tokens), step=-1,
                   lm_vocab_size=int(lm_vocab_size))

    @property
    def lm_range(self) -> tuple[int, int]:
        """[low, high): the LM ids used by action tokens."""
        last = self.first_id + self.step * (self.size - 1)
        return min(self.first_id, last), max(self.first_id, last) + 1

    def check_covers(self, num_tokens: int) -> None:
        """Raises ValueError unless every token id of a tokenizer with `num_tokens` ids (its vocab_size) maps."""
        if num_tokens > self.size:
            raise ValueError(f"The action vocabulary holds {self.size} ids but the tokenizer emits {num_tokens}; "
                             f"build the ActionVocab with size >= {num_tokens}.")


def _int32_ids(ids, name: str) -> jax.Array:
    """Integer ids -> int32 array; ValueError for non-integer dtypes (floats would be truncated) and for concrete
    ids outside int32 (they would wrap around into other ids, possibly action ids)."""
    dtype = getattr(ids, "dtype", None)
    if dtype is None:
        ids = np.asarray(ids)
        dtype = ids.dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must be integer ids, got dtype {dtype}.")
    if not isinstance(ids, jax.core.Tracer) and np.size(ids):
        concrete = np.asarray(ids)
        info = np.iinfo(np.int32)
        if concrete.min() < info.min or concrete.max() > info.max:
            raise ValueError(f"{name} holds ids outside int32 ([{int(concrete.min())}, {int(concrete.max())}]); LM ids "
                             f"are int32.")
    return jnp.asarray(ids, jnp.int32)


def to_lm_ids(tokens: jax.Array, vocab: ActionVocab) -> jax.Array:
    """Action token ids -> LM ids.

    Args:
      tokens: (...) integer action tokens in [0, vocab.size) (other values map outside the range, not checked).
      vocab: the mapping.
    Returns:
      (...) int32 LM ids.
    """
    return (vocab.first_id + vocab.step * jnp.asarray(tokens, jnp.int32)).astype(jnp.int32)


def from_lm_ids(lm_ids: jax.Array, vocab: ActionVocab, fill: int = 0) -> tuple[jax.Array, jax.Array]:
    """LM ids -> action tokens plus a validity mask; ids outside the action range are never decoded as actions.

    Args:
      lm_ids: (...) integer LM ids.
      vocab: the mapping.
      fill: token written where the id is not an action id.
    Returns:
      tokens: (...) int32 in [0, vocab.size) where valid, else `fill`.
      valid: (...) bool, True where the id is an action id.
    """
    tokens = vocab.step * (_int32_ids(lm_ids, "lm_ids") - vocab.first_id)
    valid = (tokens >= 0) & (tokens < vocab.size)
    return jnp.where(valid, tokens, fill).astype(jnp.int32), valid


class ActionSpan(NamedTuple):
    """An action-token span cut out of generated LM ids (see `extract_action_tokens`); B examples, N tokens.

    tokens: (B, N) int32 action tokens of the span, 0 after it; feed to `detokenize_fn` with `lengths`.
    lengths: (B,) int32 in 1..N, min(span_lengths, N) but at least 1, so `detokenize_fn` accepts every row.
    valid: (B,) bool, the span holds at least one action token (rows with False decode the 1-token prefix of
      token 0: meaningless, mask them out).
    span_lengths: (B,) int32, number of consecutive action ids found (may exceed N: a too-long span, truncated).
    ended: (B,) bool, the span was closed by one of the end markers (not by another id or the end of the array).
    """

    tokens: jax.Array
    lengths: jax.Array
    valid: jax.Array
    span_lengths: jax.Array
    ended: jax.Array


def extract_action_tokens(lm_ids: jax.Array, vocab: ActionVocab, num_tokens: int, start: jax.Array | int = 0,
                          end_ids: Sequence[int] = ()) -> ActionSpan:
    """Cuts the action-token span out of generated LM sequences (fixed shapes, jit-able).

    The span of row b starts at `start[b]` and runs over consecutive action ids; it stops at the first id that is
    not an action id (an end marker such as EOS, or any other text id) or at the end of the array. Only its first
    `num_tokens` tokens are kept.

    Args:
      lm_ids: (B, T) integer LM ids (e.g. the generated continuation).
      vocab: the action-id mapping.
      num_tokens: N, tokens per action chunk of the tokenizer.
      start: int or (B,) int, index where each row's action span begins (0 = the first generated id); clipped to
        [0, T] (a start at T gives an empty span).
      end_ids: LM ids that close a span (reported in `ActionSpan.ended`); they must lie outside the action range.
    Returns:
      ActionSpan (see its docstring).
    """
    low, high = vocab.lm_range
    clash = sorted(int(i) for i in end_ids if low <= int(i) < high)
    if clash:
        raise ValueError(f"End marker ids {clash} lie inside the action id range [{low}, {high}); an end marker "
                         f"must be an id the LM never uses for actions.")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
    lm_ids = _int32_ids(lm_ids, "lm_ids")
    if lm_ids.ndim != 2:
        raise ValueError(f"lm_ids must have shape (B, T), got {lm_ids.shape}.")
    batch, length = lm_ids.shape
    if length == 0:  # nothing generated: every row is an empty (invalid) span
        zeros = jnp.zeros((batch,), jnp.int32)
        return ActionSpan(tokens=jnp.zeros((batch, num_tokens), jnp.int32), lengths=zeros + 1,
                          valid=zeros.astype(bool), span_lengths=zeros, ended=zeros.astype(bool))
    start = jnp.clip(jnp.broadcast_to(jnp.asarray(start, jnp.int32), (batch,)), 0, length)
    tokens, is_action = from_lm_ids(lm_ids, vocab)
    positions = jnp.arange(length, dtype=jnp.int32)[None, :]
    stops = (positions >= start[:, None]) & ~is_action
    first_stop = jnp.min(jnp.where(stops, positions, length), axis=1)  # (B,), `length` if no stop
    span_lengths = jnp.maximum(first_stop - start, 0)
    stop_id = jnp.take_along_axis(lm_ids, jnp.minimum(first_stop, length - 1)[:, None], axis=1)[:, 0]
    is_end = jnp.zeros((batch,), bool)
    for end_id in end_ids:
        is_end = is_end | (stop_id == int(end_id))
    ended = (first_stop < length) & is_end
    kept = jnp.minimum(span_lengths, num_tokens)
    offsets = jnp.arange(num_tokens, dtype=jnp.int32)[None, :]
    gathered = jnp.take_along_axis(tokens, jnp.clip(start[:, None] + offsets, 0, length - 1), axis=1)
    span_tokens = jnp.where(offsets < kept[:, None], gathered, 0).astype(jnp.int32)
    return ActionSpan(tokens=span_tokens, lengths=jnp.maximum(kept, 1).astype(jnp.int32), valid=span_lengths > 0,
                      span_lengths=span_lengths.astype(jnp.int32), ended=ended)
