"""The frozen action tokenizer of a policy, through `oat_jax.action_tokenizers` (any `ActionTokenizer`)."""

from __future__ import annotations

from oat_jax.action_tokenizers import ActionTokenizer, OATActionTokenizer, load_action_tokenizer
from oat_jax.tokenizer import OATTokenizer


def load_tokenizer(path: str) -> ActionTokenizer:
    """A frozen tokenizer from a saved tokenizer directory (Bin / FAST / OAT) or an OAT training workdir.

    Raises FileNotFoundError when nothing loadable is there (see `load_action_tokenizer`).
    """
    return load_action_tokenizer(path)


def as_action_tokenizer(tokenizer) -> ActionTokenizer:
    """`tokenizer` itself if it implements `ActionTokenizer`; an `OATTokenizer` is wrapped in `OATActionTokenizer`."""
    if isinstance(tokenizer, OATTokenizer):
        return OATActionTokenizer(tokenizer)
    if not isinstance(tokenizer, ActionTokenizer):
        raise ValueError(f"{type(tokenizer).__name__} does not implement oat_jax.action_tokenizers.ActionTokenizer "
                         f"(vocab_size, max_tokens, fixed_length, horizon, action_dim, tokenize, detokenize, save).")
    return tokenizer
