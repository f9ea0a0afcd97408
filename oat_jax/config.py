"""`OATConfig`: every size and switch of the OAT tokenizer, with the paper's configuration as defaults."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

ENCODERS = ("registers", "conv")
DTYPES = ("float32", "bfloat16")
# Fields of configs saved by earlier versions that described training only (the objective's, today).
LEGACY_TRAINING_FIELDS = ("nested_dropout", "nested_dropout_power", "nested_dropout_full", "nested_dropout_detach",
                          "nested_dropout_detach_scale")
DROPOUT_RNGS = ("hash", "threefry")


def dataclass_from_dict(cls, d: Mapping[str, Any], what: str = ""):
    """`cls(**d)` for a dataclass `cls`; keys that are not fields raise ValueError naming them and the known fields
    (they usually mean a config written by another version). Missing keys take the field defaults.
    what: how the message names the dict (default: the class name, e.g. "OATConfig")."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"Unknown {what or cls.__name__} fields {unknown}; known fields: {sorted(known)}.")
    return cls(**d)


MAX_LEVEL = 2 ** 16  # FSQ levels per latent channel, at most


def _level(value: Any) -> int:
    """An FSQ level as an int; ValueError unless it is a whole number in 2..MAX_LEVEL (not a bool)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number.is_integer() and 2 <= number <= MAX_LEVEL):
        raise ValueError(f"OATConfig.levels must be whole numbers in 2..{MAX_LEVEL}, got {value!r}.")
    return int(number)


class JsonConfig:
    """`replace`, `to_dict` and `from_dict` of a frozen config dataclass (tuple fields are lists in the dict)."""

    def replace(self, **changes: Any):
        """Copy with `changes` applied (validated by the dataclass's __post_init__)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Inverse of `to_dict`; unknown keys raise ValueError."""
        return dataclass_from_dict(cls, d)


@dataclasses.dataclass(frozen=True)
class OATConfig:
    """Architecture of an OAT tokenizer (encoder + FSQ + decoder). Defaults are the paper's LIBERO tokenizer.

    With the defaults and `action_dim=7` the model has exactly 5,794,059 trainable parameters.
    """

    # --- data shape ---
    action_dim: int = 7  # D_a: size of one action vector.
    horizon: int = 32  # H: number of action steps in one chunk.
    num_tokens: int = 8  # N: registers in the encoder = tokens per chunk = latent slots in the decoder.
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels per latent channel; latent dim d = len(levels).

    # --- encoder (RegisterEncoder, or ConvEncoder with encoder='conv') ---
    enc_width: int = 256  # E of the encoder: width of action and register tokens.
    enc_depth: int = 2  # number of pre-norm transformer blocks in the encoder.
    enc_heads: int = 4  # attention heads in the encoder (head_dim = enc_width // enc_heads).
    enc_mlp_ratio: float = 4.0  # SwiGLU hidden size = int(2 * enc_mlp_ratio * enc_width / 3) (682 for E=256).
    enc_dropout: float = 0.1  # dropout after the attention projection and after the SwiGLU output.
    causal_registers: bool = True  # register i attends registers 0..i only (else all registers); ordering switch 1.
    encoder: str = "registers"  # 'registers' (OAT RegisterEncoder) | 'conv' (QueST-style: causal temporal-conv
    #                             downsampling H -> N, then a causal transformer over the N steps; see ConvEncoder).
    enc_patch: int = 1  # action steps per encoder input token (H / enc_patch tokens); 1 = the reference.

    # --- decoder (OATDecoder) ---
    dec_width: int = 256  # E of the decoder: width of queries and memory slots.
    dec_depth: int = 4  # number of pre-norm transformer decoder layers.
    dec_heads: int = 4  # attention heads in self- and cross-attention of the decoder.
    dec_ffn_dim: int = 1024  # hidden size of the decoder's GELU feed-forward network.
    dec_dropout: float = 0.1  # dropout after each decoder sub-layer and inside the FFN.
    dec_attn_dropout: float = 0.1  # dropout on the decoder's attention probabilities.
    causal_decoder: bool = True  # decoder query step t attends query steps 0..t only (causal self-attention).
    dec_patch: int = 1  # action steps each decoder query outputs (H / dec_patch queries); 1 = the reference.

    # --- numerics ---
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm (encoder, QK-norm, decoder, heads).
    dtype: str = "float32"  # compute dtype of matmuls: 'float32' | 'bfloat16'; params, FSQ, LayerNorm stay fp32.
    dropout_rng: str = "hash"  # dropout masks: 'hash' (counter-based integer hash, ~10x cheaper on CPU) | 'threefry'.

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(_level(v) for v in self.levels))
        self.validate()

    @property
    def latent_dim(self) -> int:
        """d: channels per latent token, one per FSQ level."""
        return len(self.levels)

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids: the product of the FSQ levels."""
        return math.prod(self.levels)

    @property
    def enc_mlp_hidden(self) -> int:
        """Hidden size of the encoder's SwiGLU MLP: int(2 * ratio * E / 3)."""
        return int(2 * self.enc_mlp_ratio * self.enc_width / 3)

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent field."""
        for name in ("action_dim", "horizon", "num_tokens", "enc_width", "enc_depth", "enc_heads", "dec_width",
                     "dec_depth", "dec_heads", "dec_ffn_dim", "enc_patch", "dec_patch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"OATConfig.{name} must be a positive int, got {value!r}.")
        if not self.levels or any(v < 2 for v in self.levels):
            raise ValueError(f"OATConfig.levels must be a non-empty list of ints >= 2, got {list(self.levels)}.")
        if self.enc_width % self.enc_heads:
            raise ValueError(f"OATConfig.enc_width ({self.enc_width}) must be divisible by enc_heads "
                             f"({self.enc_heads}).")
        if self.dec_width % self.dec_heads:
            raise ValueError(f"OATConfig.dec_width ({self.dec_width}) must be divisible by dec_heads "
                             f"({self.dec_heads}).")
        if self.enc_width % 2 or self.dec_width % 2:
            raise ValueError("OATConfig.enc_width and dec_width must be even (sin-cos position tables).")
        if self.enc_mlp_hidden < 1:
            raise ValueError(f"OATConfig.enc_mlp_ratio={self.enc_mlp_ratio} gives an empty SwiGLU hidden layer.")
        for name in ("enc_dropout", "dec_dropout", "dec_attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"OATConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
        for name in ("enc_patch", "dec_patch"):
            if self.horizon % getattr(self, name):
                raise ValueError(f"OATConfig.{name} ({getattr(self, name)}) must divide horizon ({self.horizon}).")
        if self.encoder not in ENCODERS:
            raise ValueError(f"OATConfig.encoder must be one of {ENCODERS}, got {self.encoder!r}.")
        if self.encoder == "conv":
            steps = self.horizon // self.enc_patch
            ratio = steps // self.num_tokens
            if steps % self.num_tokens or ratio & (ratio - 1):
                raise ValueError(f"OATConfig.encoder='conv' downsamples by stride-2 convolutions, so horizon / "
                                 f"enc_patch ({self.horizon} / {self.enc_patch}) must be num_tokens "
                                 f"({self.num_tokens}) times a power of two (e.g. horizon=32, num_tokens=8); change "
                                 f"horizon, enc_patch or num_tokens.")
        if self.dropout_rng not in DROPOUT_RNGS:
            raise ValueError(f"OATConfig.dropout_rng must be one of {DROPOUT_RNGS}, got {self.dropout_rng!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"OATConfig.dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"OATConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}.")

    def replace(self, **changes: Any) -> "OATConfig":
        """Returns a copy with `changes` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (levels as a list)."""
        d = dataclasses.asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OATConfig":
        """Inverse of `to_dict`. Unknown keys raise ValueError (they usually mean a config from another version).

        Configs saved by earlier versions also held how the tokenizer was trained (nested dropout); those training
        fields are dropped, as they do not change what the params compute.
        """
        d = dict(d)
        if d.pop("dec_code_embed", False):
            raise ValueError("This tokenizer was trained with dec_code_embed=True, an experimental decoder option "
                             "that measured no gain and was removed (its params do not load into today's decoder); "
                             "load it with the oat_jax version that trained it, or retrain it.")
        for name in LEGACY_TRAINING_FIELDS:
            d.pop(name, None)
        return dataclass_from_dict(cls, d)
