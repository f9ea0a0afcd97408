"""Action tokenizers behind one interface (`ActionTokenizer`): OAT (`oat_jax.OATTokenizer`: OAT, OAT x and
QueST-style, all `OATConfig`s), uniform binning (Bin) and DCT + BPE (FAST).

    from oat_jax.action_tokenizers import fit_action_tokenizer, load_action_tokenizer
    tok = load_action_tokenizer("runs/oat")                 # or fit_action_tokenizer("bin", train_chunks)
    tokens, lengths = tok.tokenize(chunks)                  # (B, max_tokens) int32 PAD-padded, (B,) int32
    actions, valid = tok.detokenize(tokens, lengths)        # (B, H, D_a) float32 raw units, (B,) bool

Importing this package does not import the `tokenizers` library (only fitting or loading FAST does).
"""

from oat_jax.action_tokenizers.bin import BinActionTokenizer
from oat_jax.action_tokenizers.fast import FASTActionTokenizer
from oat_jax.action_tokenizers.protocol import PAD_ID, ActionTokenizer
from oat_jax.action_tokenizers.registry import TOKENIZER_TYPES, fit_action_tokenizer, load_action_tokenizer

__all__ = ["PAD_ID", "TOKENIZER_TYPES", "ActionTokenizer", "BinActionTokenizer", "FASTActionTokenizer",
           "fit_action_tokenizer", "load_action_tokenizer"]
