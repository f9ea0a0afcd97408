"""The tokenizer's training objective, in one place: nested dropout (which token prefixes each row of a batch is
decoded at), the reconstruction loss over those decodes, the monotone hinge and the gradient detach.

Nested dropout is what orders the tokens: the decoder is trained on prefixes of k of the N tokens (the others
replaced by the mask vector), k drawn from P(k), so the first tokens must carry what matters most. The model only
receives the lengths; everything about how they are chosen and scored lives here.

P(k) (`keep_length_distribution`): 'pow2' uniform over {1, 2, 4, ..., N} (the reference), 'uniform' over 1..N,
'power' P(k) ~ k**power, 'none' always N (OAT x, QueST-style: unordered tokens); `full` then moves that much mass
onto k = N.

Two batch plans:
- sampled (`split=False`, the reference): each row is decoded once at a k drawn from P(k);
- split (`split=True`): round(B * P(k < N)) "short" rows are each decoded at every k < N in the support (encoded
  once), those decodes weighted by P(k | k < N); the other rows are decoded at N. Every row weighs 1/B, so the
  expected share of each k is the reference's, with far less variance on the rare short prefixes. On the short rows
  `monotone_weight` adds a hinge on any k that decodes worse than (1 - MONOTONE_MARGIN) x the k before it.
`detach_tokens` m > 0: decodes of all N tokens pass only DETACH_SCALE of their gradient into codes 0..m-1, so the
leading tokens are shaped mostly by the short prefixes (the forward value is unchanged).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from oat_jax.config import dataclass_from_dict

if TYPE_CHECKING:
    from oat_jax.model import OATModel

NESTED_DROPOUT_MODES = ("pow2", "uniform", "power", "none")
# The hinge's margin and the detached codes' gradient share, chosen with the register encoder (0.05 and 0.3 among
# 0-0.1 and 0-0.5; docs/TOKENIZER_FIDELITY.md, findings 11-13) and kept with the conv encoder.
MONOTONE_MARGIN, DETACH_SCALE = 0.05, 0.3


def keep_length_distribution(num_tokens: int, mode: str, power: float = 1.0,
                             full: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Support and probabilities of the kept prefix length k (see the module docstring).

    'pow2' adds N itself to the support when N is not a power of two. P(k) = (1 - full) P_mode(k) + full [k = N].
    Returns:
      (values int32 (M,) increasing, probs float64 (M,) summing to 1).
    """
    if mode not in NESTED_DROPOUT_MODES:
        raise ValueError(f"nested dropout mode must be one of {NESTED_DROPOUT_MODES}, got {mode!r}.")
    if mode == "none":
        values = np.array([num_tokens])
    elif mode == "pow2":
        values = 2 ** np.arange(int(np.log2(num_tokens)) + 1)
        if values[-1] != num_tokens:
            values = np.append(values, num_tokens)
    else:
        values = np.arange(1, num_tokens + 1)
    weights = values.astype(np.float64) ** power if mode == "power" else np.ones(len(values))
    probs = (1.0 - full) * weights / weights.sum()
    probs[values == num_tokens] += full
    return values.astype(np.int32), probs


@dataclasses.dataclass(frozen=True)
class Objective:
    """How a tokenizer batch is decoded and scored. Defaults: the paper's (pow2 nested dropout, one sampled length
    per row, nothing else)."""

    nested_dropout: str = "pow2"  # P(k) family: 'pow2' | 'uniform' | 'power' | 'none' (unordered tokens).
    power: float = 1.0  # exponent of 'power': P(k) ~ k**power.
    full: float = 0.0  # extra mass on k = N: P(k) = (1 - full) P_mode(k) + full [k = N].
    split: bool = False  # the split batch plan (see the module docstring) instead of one sampled k per row.
    monotone_weight: float = 0.0  # split only: weight of the hinge on a prefix with MSE(k) > 0.95 MSE(k - 1).
    detach_tokens: int = 0  # m: full-length decodes pass only 0.3 of their gradient into codes 0..m-1.

    def validate(self, num_tokens: int) -> None:
        """Raises ValueError naming the first field that is out of range, inert or contradicts another."""
        if self.nested_dropout not in NESTED_DROPOUT_MODES:
            raise ValueError(f"config.objective.nested_dropout must be one of {NESTED_DROPOUT_MODES}, got "
                             f"{self.nested_dropout!r}.")
        if not 0.0 <= self.full <= 1.0:
            raise ValueError(f"config.objective.full must be a probability in [0, 1], got {self.full}.")
        if self.monotone_weight < 0.0:
            raise ValueError(f"config.objective.monotone_weight must be >= 0, got {self.monotone_weight}.")
        m = self.detach_tokens
        if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m < num_tokens:
            raise ValueError(f"config.objective.detach_tokens must be an int in 0..{num_tokens - 1} (num_tokens - 1), "
                             f"got {m!r}.")
        if not self.ordered:
            inert = [name for name, value in (("split", self.split), ("full", self.full),
                                              ("monotone_weight", self.monotone_weight),
                                              ("detach_tokens", self.detach_tokens)) if value]
            if inert:
                raise ValueError(f"config.objective.nested_dropout='none' decodes every row at N, so "
                                 f"config.objective.{inert[0]} has no effect; set it to its off value (the :oatx "
                                 f"and :quest variants do).")
        if self.monotone_weight and not self.split:
            raise ValueError("config.objective.monotone_weight > 0 acts on the split plan's short rows: it needs "
                             "config.objective.split=True.")
        if self.power != 1.0 and self.nested_dropout != "power":
            raise ValueError(f"config.objective.power has no effect with nested_dropout={self.nested_dropout!r} "
                             f"(it is the exponent of 'power').")
        if self.split and self.short_mass(num_tokens) == 0.0:
            raise ValueError("config.objective.split=True with full=1 leaves no short rows; set split=False.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Objective":
        """From `config.objective` (a dict or ConfigDict); unknown keys raise ValueError naming them."""
        return dataclass_from_dict(cls, dict(d), "config.objective")

    @property
    def ordered(self) -> bool:
        """True when prefixes are trained (nested dropout on), so every k decodes."""
        return self.nested_dropout != "none"

    def distribution(self, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """(values int32, probs float64) of P(k) (`keep_length_distribution`)."""
        return keep_length_distribution(num_tokens, self.nested_dropout, self.power, self.full)

    def short_mass(self, num_tokens: int) -> float:
        """P(k < N)."""
        values, probs = self.distribution(num_tokens)
        return float(probs[values < num_tokens].sum())

    def short_lengths(self, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """The split plan's columns: (the support below N, int32 (M,) increasing; P(k | k < N), float64 (M,))."""
        values, probs = keep_length_distribution(num_tokens, self.nested_dropout, self.power, 0.0)
        below = values < num_tokens
        return values[below], probs[below] / probs[below].sum()

    def short_rows(self, batch_size: int, num_tokens: int) -> int:
        """Rows of a (micro-)batch of `batch_size` that the split plan decodes below N: round(B * P(k < N))."""
        if not (self.split and self.ordered):
            return 0
        return int(round(batch_size * self.short_mass(num_tokens)))

    def row_lengths(self, rng: jax.Array, batch_size: int, num_tokens: int) -> jax.Array:
        """The prefix length each row of a batch is decoded at (split plan: its shortest), (B,) int32 in 1..N.

        Sampled plan: one draw from P(k) per row (all N for 'none'). Split plan: no randomness; the batch's first
        short_rows(B) rows are short.
        """
        if self.split and self.ordered:
            short = self.short_rows(batch_size, num_tokens)
            shortest = int(self.short_lengths(num_tokens)[0][0])
            return jnp.where(jnp.arange(batch_size) < short, shortest, num_tokens).astype(jnp.int32)
        values, probs = self.distribution(num_tokens)
        if len(values) == 1:
            return jnp.full((batch_size,), int(values[0]), jnp.int32)
        idx = jax.random.categorical(rng, jnp.log(jnp.asarray(probs, jnp.float32)), shape=(batch_size,))
        return jnp.asarray(values)[idx]

    def loss(self, model: OATModel, params: Any, actions: jax.Array, lengths: jax.Array, rng: jax.Array) -> jax.Array:
        """Training loss of one (micro-)batch, dropout on.

        Args:
          actions: (B, H, D_a) float32, normalized.
          lengths: (B,) int32 from `row_lengths` (the split plan only uses its own static layout).
          rng: key of the "dropout" stream.
        Returns:
          float32 scalar. Sampled plan: the MSE of each row decoded at its length. Split plan: ((B - S) * MSE of the
          rows at N + S * (sum_k P(k | k < N) * MSE_k of the short rows + monotone_weight * hinge)) / B.
        """
        if not (self.split and self.ordered):
            return self._mse(model, params, actions, lengths, rng)
        n = model.config.num_tokens
        batch, short = actions.shape[0], self.short_rows(actions.shape[0], n)
        full_rng, short_rng = jax.random.split(rng)
        total = jnp.zeros((), jnp.float32)
        if short < batch:
            total += (batch - short) * self._mse(model, params, actions[short:],
                                                 jnp.full((batch - short,), n, jnp.int32), full_rng)
        if short > 0:
            values, weights = self.short_lengths(n)
            columns = jnp.broadcast_to(jnp.asarray(values, jnp.int32), (short, len(values)))
            per_column = self.column_losses(model, params, actions[:short], columns, short_rng)
            short_loss = jnp.sum(per_column * jnp.asarray(weights, jnp.float32))
            if self.monotone_weight:
                short_loss += self.monotone_weight * monotone_penalty(per_column, MONOTONE_MARGIN)
            total += short * short_loss
        return total / batch

    def _mse(self, model: OATModel, params: Any, actions: jax.Array, lengths: jax.Array, rng: jax.Array) -> jax.Array:
        recon = model.apply({"params": params}, actions, lengths, method=self._reconstruct, rngs={"dropout": rng})
        return jnp.mean(jnp.square(recon.astype(jnp.float32) - actions))

    def _reconstruct(self, module: OATModel, actions: jax.Array, lengths: jax.Array) -> jax.Array:
        """(Bound model) actions (B, H, D_a), lengths (B,) -> (B, H, D_a) float32, dropout on, detach applied."""
        codes = module.codes(actions, deterministic=False)
        codes = detach_leading(codes, lengths, self.detach_tokens, DETACH_SCALE)
        return module.decode(codes, lengths, deterministic=False)

    def column_losses(self, model: OATModel, params: Any, actions: jax.Array, lengths: jax.Array,
                      rng: jax.Array) -> jax.Array:
        """MSE of each prefix column, dropout on, each chunk encoded once and decoded M times.

        Args:
          actions: (B, H, D_a) float32 normalized; lengths: (B, M) int32 in 1..N.
        Returns:
          (M,) float32.
        """
        def decode_columns(module, x, k):
            codes = module.codes(x, deterministic=False)
            b, m = k.shape
            flat = k.reshape(-1)
            codes = detach_leading(jnp.repeat(codes, m, axis=0), flat, self.detach_tokens, DETACH_SCALE)
            recon = module.decode(codes, flat, deterministic=False)  # (B*M, H, D_a)
            return recon.reshape((b, m) + recon.shape[1:])

        recon = model.apply({"params": params}, actions, lengths, method=decode_columns, rngs={"dropout": rng})
        return jnp.mean(jnp.square(recon.astype(jnp.float32) - actions[:, None]), axis=(0, 2, 3))


def detach_leading(codes: jax.Array, lengths: jax.Array, count: int, scale: float) -> jax.Array:
    """Codes whose first `count` positions pass only `scale` of their gradient in the rows decoded at all N.

    Args:
      codes: (B, N, d) float codes; lengths: (B,) int32 in 1..N.
    Returns:
      (B, N, d), the same values (sg + scale * (c - sg) is exact in the forward pass); `codes` itself for count 0.
    """
    if not count:
        return codes
    n = codes.shape[1]
    frozen = (jnp.arange(n)[None, :] < count) & (jnp.asarray(lengths)[:, None] == n)  # (B, N)
    fixed = jax.lax.stop_gradient(codes)
    return jnp.where(frozen[..., None], fixed + scale * (codes - fixed), codes)


def monotone_penalty(per_length: jax.Array, margin: float) -> jax.Array:
    """Hinge on each prefix that decodes worse than (1 - margin) x the one before it.

    Args:
      per_length: (M,) float32 losses of increasing prefix lengths on the same rows; margin in [0, 1).
    Returns:
      float32 scalar sum over j >= 1 of relu(L_j - (1 - margin) * stop_gradient(L_{j-1})): its gradient weighs only
      the longer prefix of a pair that is out of order and never pushes the shorter one up.
    """
    previous = jax.lax.stop_gradient(per_length[:-1]) * (1.0 - margin)
    return jnp.sum(jax.nn.relu(per_length[1:] - previous))
