"""The tokenizer's pure train step: nested-dropout reconstruction loss, gradient accumulation, update, EMA."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oat_jax.config import OATConfig
from oat_jax.decoder import keep_length_distribution, sample_keep_lengths
from oat_jax.model import OATModel
from oat_jax.normalizer import Normalizer
from oat_jax.training import augment
from oat_jax.training.train_state import TrainState, apply_gradients
from oat_jax.training.sharding import BATCH_AXES


def model_config(model_cfg: ml_collections.ConfigDict, action_dim: int) -> OATConfig:
    """`OATConfig` from `config.model`; action_dim = -1 there means "the dataset's action dimension"."""
    fields = model_cfg.to_dict()
    if fields.get("action_dim", -1) in (-1, None):
        fields["action_dim"] = action_dim
    elif fields["action_dim"] != action_dim:
        raise ValueError(f"config.model.action_dim={fields['action_dim']} but the dataset's actions have {action_dim} "
                         f"dimensions; set it to -1 to follow the dataset.")
    return OATConfig.from_dict(fields)


def init_train_state(model: OATModel, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state: params initialised from `seed`, EMA = params, zero counters. Jit-able (no arguments traced)."""
    init_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed))
    c = model.config
    params = model.init({"params": init_rng}, jnp.zeros((1, c.horizon, c.action_dim), jnp.float32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), ema_count=jnp.zeros((), jnp.int32), rng=run_rng)


def reconstruction_loss(model: OATModel, params: Any, actions_norm: jax.Array, lengths: jax.Array,
                        rng: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Training loss: mean squared error in normalized units, dropout on, the decoder seeing `lengths` tokens.

    Args:
      actions_norm: (B, H, D_a) float32, normalized.
      lengths: (B,) int32 in 1..N, the kept prefix length of each example (nested dropout); or (B, M): M prefix
        lengths per example, each chunk encoded once and decoded M times.
      rng: PRNG key of the "dropout" stream.
      weights: (M,) float32 weights of the M prefix columns (they sum to 1); None = uniform. Only with (B, M)
        lengths.
    Returns:
      float32 scalar: sum over columns j of weights[j] * (MSE of the decodes with lengths[:, j]).
    """
    if lengths.ndim == 1:
        recon, _ = model.apply({"params": params}, actions_norm, deterministic=False, lengths=lengths,
                               rngs={"dropout": rng})
        return jnp.mean(jnp.square(recon.astype(jnp.float32) - actions_norm))
    return combine_columns(column_losses(model, params, actions_norm, lengths, rng), weights)


def combine_columns(per_column: jax.Array, weights: jax.Array | None) -> jax.Array:
    """(M,) float32 column losses -> float32 scalar: their mean (weights None) or sum weighted by (M,) `weights`."""
    return jnp.mean(per_column) if weights is None else jnp.sum(per_column * weights)


def column_losses(model: OATModel, params: Any, actions_norm: jax.Array, lengths: jax.Array,
                  rng: jax.Array) -> jax.Array:
    """MSE of each prefix column, dropout on: actions_norm (B, H, D_a) float32, lengths (B, M) int32 in 1..N, each
    chunk encoded once and decoded M times -> (M,) float32."""
    recon = model.apply({"params": params}, actions_norm, lengths, deterministic=False,
                        method=OATModel.decode_prefixes, rngs={"dropout": rng})  # (B, M, H, D_a)
    return jnp.mean(jnp.square(recon.astype(jnp.float32) - actions_norm[:, None]), axis=(0, 2, 3))


def monotone_penalty(per_length: jax.Array, margin: float) -> jax.Array:
    """Hinge on each prefix that decodes worse than (1 - margin) x the one before it.

    Args:
      per_length: (M,) float32 losses of increasing prefix lengths (e.g. 1, 2, ..., M) on the same rows.
      margin: in [0, 1).
    Returns:
      float32 scalar sum over j >= 1 of relu(L_j - (1 - margin) * stop_gradient(L_{j-1})): its gradient adds weight
      only to the longer prefix of a pair that is out of order, never pushes the shorter one up.
    """
    previous = jax.lax.stop_gradient(per_length[:-1]) * (1.0 - margin)
    return jnp.sum(jax.nn.relu(per_length[1:] - previous))


def check_loss_config(loss_cfg: ml_collections.ConfigDict | None, num_tokens: int) -> None:
    """Raises ValueError naming the `config.loss` field that is out of range."""
    if loss_cfg is None:
        return
    samples = int(loss_cfg.get("prefix_samples", 1))
    if samples != -1 and not 1 <= samples <= 4 * num_tokens:
        raise ValueError(f"config.loss.prefix_samples must be -1 (every length 1..N) or in 1..{4 * num_tokens}, "
                         f"got {samples}.")
    weight = float(loss_cfg.get("full_length_weight", 0.0))
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"config.loss.full_length_weight must be in [0, 1), got {weight}; 0 = no extra full-length "
                         f"decode (the reference), and the OAT x ablation is model.nested_dropout='none'.")
    end = float(loss_cfg.get("full_end", -1.0))
    if end != -1.0 and not 0.0 <= end <= 1.0:
        raise ValueError(f"config.loss.full_end must be -1 (no schedule) or a probability in [0, 1], got {end}.")
    short = int(loss_cfg.get("short_samples", 1))
    if short != -1 and not 1 <= short <= 4 * num_tokens:
        raise ValueError(f"config.loss.short_samples must be -1 (every length below N) or in 1..{4 * num_tokens}, "
                         f"got {short}.")
    weighting = loss_cfg.get("short_weighting", "uniform")
    if weighting not in ("uniform", "distribution"):
        raise ValueError(f"config.loss.short_weighting must be 'uniform' or 'distribution', got {weighting!r}.")
    monotone = float(loss_cfg.get("monotone_weight", 0.0))
    margin = float(loss_cfg.get("monotone_margin", 0.0))
    if monotone < 0.0 or not 0.0 <= margin < 1.0:
        raise ValueError(f"config.loss.monotone_weight must be >= 0 and config.loss.monotone_margin in [0, 1), got "
                         f"{monotone} and {margin}.")
    if (weighting != "uniform" or monotone > 0.0) and short != -1:
        raise ValueError("config.loss.short_weighting='distribution' and config.loss.monotone_weight > 0 act on the "
                         "short rows decoded at every length below N: they need config.loss.short_samples=-1 "
                         f"(got {short}).")
    if short != 1 and (samples != 1 or weight != 0.0 or end != -1.0):
        raise ValueError("config.loss.short_samples != 1 fixes the number of full-length and short rows per batch; "
                         "it needs config.loss.prefix_samples=1, config.loss.full_length_weight=0 and "
                         f"config.loss.full_end=-1 (got {samples}, {weight}, {end}).")


def full_mass(config: OATConfig, loss_cfg: ml_collections.ConfigDict | None, progress: jax.Array | float):
    """Probability of keeping all N tokens at training `progress` in [0, 1]: model.nested_dropout_full, moved
    linearly to config.loss.full_end over the run when that is set (>= 0). Returns a float (no schedule) or a float32
    scalar array."""
    end = -1.0 if loss_cfg is None else float(loss_cfg.get("full_end", -1.0))
    if end < 0.0:
        return float(config.nested_dropout_full)
    start = float(config.nested_dropout_full)
    return start + (end - start) * jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)


def _sample_lengths(rng: jax.Array, shape: tuple[int, ...], config: OATConfig, full) -> jax.Array:
    """Kept prefix lengths (int32 in 1..N) of `shape` from the nested-dropout distribution with full-length mass
    `full` (a float: `sample_keep_lengths`; a traced scalar: the same distribution built in jnp)."""
    n = config.num_tokens
    if isinstance(full, float):
        size = int(np.prod(shape))
        return sample_keep_lengths(rng, size, n, config.nested_dropout, config.nested_dropout_power,
                                   full).reshape(shape)
    values, probs = keep_length_distribution(n, config.nested_dropout, config.nested_dropout_power, 0.0)
    base = np.zeros(n)
    base[values - 1] = probs
    dist = (1.0 - full) * jnp.asarray(base, jnp.float32) + full * jax.nn.one_hot(n - 1, n, dtype=jnp.float32)
    return (1 + jax.random.categorical(rng, jnp.log(dist), shape=shape)).astype(jnp.int32)


def prefix_lengths_and_weights(rng: jax.Array, batch_size: int, config: OATConfig,
                               loss_cfg: ml_collections.ConfigDict | None,
                               progress: jax.Array | float = 0.0) -> tuple[jax.Array, jax.Array | None]:
    """Prefix lengths each example is decoded at in one training step, and the loss weight of each column.

    - Reference (`loss_cfg` None or prefix_samples=1, full_length_weight=0): one length per example from the
      nested-dropout distribution: lengths (B,), weights None.
    - prefix_samples=M > 1: M lengths per example, each drawn independently from that distribution;
      prefix_samples=-1: every length 1..N. Columns weigh equally.
    - full_length_weight=a > 0: one more column of length N (the encoder is paid once); the prefix columns then
      share weight 1 - a and the full-length column has weight a.
    - full_end >= 0: the distribution's full-length mass moves linearly from model.nested_dropout_full at
      progress 0 to full_end at progress 1 (`progress` = step / num_steps).
    With nested_dropout='none' (OAT x) every example keeps all N tokens: lengths (B,) = N.

    Returns:
      (lengths (B,) or (B, M) int32 in 1..N, weights (M,) float32 summing to 1, or None with (B,) lengths).
    """
    n = config.num_tokens
    samples = 1 if loss_cfg is None else int(loss_cfg.get("prefix_samples", 1))
    weight = 0.0 if loss_cfg is None else float(loss_cfg.get("full_length_weight", 0.0))
    if config.nested_dropout == "none":
        return jnp.full((batch_size,), n, jnp.int32), None
    full = full_mass(config, loss_cfg, progress)
    if samples == 1 and weight == 0.0:
        return _sample_lengths(rng, (batch_size,), config, full), None
    if samples == -1:
        lengths = jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.int32), (batch_size, n))
    else:
        lengths = _sample_lengths(rng, (batch_size, samples), config, full)
    columns = lengths.shape[1]
    weights = jnp.full((columns,), 1.0 / columns, jnp.float32)
    if weight > 0.0:
        lengths = jnp.concatenate([lengths, jnp.full((batch_size, 1), n, jnp.int32)], axis=1)
        weights = jnp.append(weights * (1.0 - weight), weight).astype(jnp.float32)
    return lengths, weights


def split_rows(batch_size: int, config: OATConfig, loss_cfg: ml_collections.ConfigDict | None) -> int:
    """Rows of a (micro-)batch that are decoded below N when config.loss.short_samples != 1 (0 otherwise).

    Under `short_samples` the batch is split with fixed counts instead of one draw per example: round(B * P(k < N))
    rows (P from the nested-dropout distribution, `model.nested_dropout_full` included) are decoded at several
    lengths below N each, the other rows at N. The expected share of short-prefix rows is the reference's.
    """
    if loss_cfg is None or int(loss_cfg.get("short_samples", 1)) == 1 or config.nested_dropout == "none":
        return 0
    values, probs = keep_length_distribution(config.num_tokens, config.nested_dropout, config.nested_dropout_power,
                                             config.nested_dropout_full)
    return int(round(batch_size * float(probs[values < config.num_tokens].sum())))


def sample_short_lengths(rng: jax.Array, rows: int, config: OATConfig, samples: int) -> jax.Array:
    """Prefix lengths of the short rows of a split batch (see `split_rows`).

    Args:
      rows: S, the number of short rows.
      samples: M >= 1 lengths per row, each drawn from the nested-dropout distribution restricted to k < N
        (P(k | k < N)); -1 = every length of that support once.
    Returns:
      (S, M) int32 in 1..N-1.
    """
    n = config.num_tokens
    values, probs = keep_length_distribution(n, config.nested_dropout, config.nested_dropout_power, 0.0)
    values, probs = values[values < n], probs[values < n]
    if rows == 0 or not len(values):
        return jnp.zeros((0, len(values) if samples == -1 else samples), jnp.int32)
    if samples == -1:
        return jnp.broadcast_to(jnp.asarray(values, jnp.int32), (rows, len(values)))
    idx = jax.random.categorical(rng, jnp.log(jnp.asarray(probs / probs.sum(), jnp.float32)), shape=(rows, samples))
    return jnp.asarray(values, jnp.int32)[idx]


def short_loss_terms(config: OATConfig, loss_cfg: ml_collections.ConfigDict | None
                     ) -> tuple[jax.Array | None, float, float]:
    """How the short rows' columns combine under loss.short_samples=-1 (every length 1..N-1 per short row).

    Returns:
      (column weights (N-1,) float32 = P(k | k < N) with loss.short_weighting='distribution', else None (equal
      weights); loss.monotone_weight; loss.monotone_margin). (None, 0.0, 0.0) unless short_samples is -1.
    """
    if loss_cfg is None or int(loss_cfg.get("short_samples", 1)) != -1 or config.nested_dropout == "none":
        return None, 0.0, 0.0
    weights = None
    if loss_cfg.get("short_weighting", "uniform") == "distribution":
        values, probs = keep_length_distribution(config.num_tokens, config.nested_dropout,
                                                 config.nested_dropout_power, 0.0)
        probs = probs[values < config.num_tokens]
        weights = jnp.asarray(probs / probs.sum(), jnp.float32)
    return weights, float(loss_cfg.get("monotone_weight", 0.0)), float(loss_cfg.get("monotone_margin", 0.0))


def split_reconstruction_loss(model: OATModel, params: Any, actions_norm: jax.Array, short_lengths: jax.Array,
                              rng: jax.Array, short_weights: jax.Array | None = None, monotone_weight: float = 0.0,
                              monotone_margin: float = 0.0) -> jax.Array:
    """Training loss of a split batch: rows [:S] decoded at the S x M `short_lengths` (each chunk encoded once),
    rows [S:] at N; each row weighs 1 / B, a short row's weight shared by its M decodes equally or by
    `short_weights`, plus `monotone_weight` x `monotone_penalty` of the short columns (see `short_loss_terms`).

    Args:
      actions_norm: (B, H, D_a) float32, normalized.
      short_lengths: (S, M) int32 in 1..N-1, S <= B.
      rng: PRNG key of the "dropout" stream.
      short_weights: (M,) float32 summing to 1, or None (equal).
      monotone_weight, monotone_margin: the hinge's weight and margin; the columns must then be increasing lengths
        (short_samples=-1: the distribution's support below N in order).
    Returns:
      float32 scalar: ((B - S) * MSE of the full-length rows + S * (weighted mean over columns of the short rows'
      MSE + monotone_weight * hinge)) / B.
    """
    batch, short = actions_norm.shape[0], short_lengths.shape[0]
    full_rng, short_rng = jax.random.split(rng)
    total = jnp.zeros((), jnp.float32)
    if short < batch:
        full = jnp.full((batch - short,), model.config.num_tokens, jnp.int32)
        total += (batch - short) * reconstruction_loss(model, params, actions_norm[short:], full, full_rng)
    if short > 0:
        per_column = column_losses(model, params, actions_norm[:short], short_lengths, short_rng)
        short_loss = combine_columns(per_column, short_weights)
        if monotone_weight:
            short_loss += monotone_weight * monotone_penalty(per_column, monotone_margin)
        total += short * short_loss
    return total / batch


def _split_micro(x: jax.Array, accum_steps: int, mesh: Mesh | None) -> jax.Array:
    """(B, ...) -> (accum_steps, B / accum_steps, ...); micro-batch i takes rows i, i + accum_steps, ... so each
    one stays spread over every device."""
    micro = jnp.swapaxes(x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]), 0, 1)
    if mesh is not None:
        micro = jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, P(None, BATCH_AXES)))
    return micro


def make_train_step(model: OATModel, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    normalizer: Normalizer, ema_cfg: ml_collections.ConfigDict,
                    accum_steps: int = 1,
                    mesh: Mesh | None = None,
                    loss_cfg: ml_collections.ConfigDict | None = None,
                    augment_cfg: ml_collections.ConfigDict | None = None,
                    num_steps: int | None = None,
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds `train_step(state, batch) -> (state, metrics)` (pure; jit it with shardings outside).

    The batch {"actions": (B, H, D_a) float32, raw units} is normalized. Nested dropout: the prefix lengths each
    example is decoded at are drawn from the config's distribution, one per example in the reference, or several
    plus an optional full-length decode following `loss_cfg` (`config.loss`, see `prefix_lengths_and_weights`);
    with loss.short_samples != 1 a fixed number of rows is decoded at several lengths below N and the rest at N
    (`split_rows`, `split_reconstruction_loss`).
    Examples kept at >= augment.min_length tokens are then augmented (`augment_cfg`, see `augment.augment_chunks`
    and `augment.gate_by_length`; None or all probabilities 0 = none). The batch is then split into
    `accum_steps` micro-batches of B / accum_steps examples (each still spread over every device) whose gradients
    are averaged before a single optimizer update: without ordinary dropout this equals one step on the whole batch.
    `mesh` (if given) pins the micro-batches to the batch sharding.
    metrics: {"loss", "grad_norm", "lr", "ema_decay"} float32 scalars.
    """
    c = model.config
    check_loss_config(loss_cfg, c.num_tokens)
    if loss_cfg is not None and float(loss_cfg.get("full_end", -1.0)) >= 0.0 and not num_steps:
        raise ValueError("config.loss.full_end schedules over the run: make_train_step needs num_steps.")
    augmenting = augment.is_active(augment_cfg)
    if augmenting:
        augment.check_config(augment_cfg, c.num_tokens)

    short_samples = 1 if loss_cfg is None else int(loss_cfg.get("short_samples", 1))
    if c.nested_dropout == "none":  # OAT x: every row is full-length, nothing to split (the reference step)
        short_samples = 1

    short_weights, monotone_weight, monotone_margin = short_loss_terms(c, loss_cfg)

    def grads_of(params, actions, lengths, rng, weights):
        if short_samples != 1:  # `lengths` are the short rows' (S, M) lengths of a split batch
            return jax.value_and_grad(lambda p: split_reconstruction_loss(
                model, p, actions, lengths, rng, short_weights, monotone_weight, monotone_margin))(params)
        return jax.value_and_grad(lambda p: reconstruction_loss(model, p, actions, lengths, rng, weights))(params)

    def split_lengths(rng, batch_size):
        """Short rows' (S_total, M) lengths; micro-batch i's first S_total / accum_steps rows are short (rows i,
        i + accum_steps, ... of the batch, as `_split_micro` takes them). Also the (B,) shortest length per row."""
        rows = split_rows(batch_size // accum_steps, c, loss_cfg) * accum_steps
        short = sample_short_lengths(rng, rows, c, short_samples)
        shortest = jnp.concatenate([jnp.min(short, axis=1, initial=c.num_tokens),
                                    jnp.full((batch_size - rows,), c.num_tokens, jnp.int32)])
        return short, shortest

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        actions = normalizer.normalize(batch["actions"])
        drop_rng, nested_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
        progress = state.step / num_steps if num_steps else 0.0
        if short_samples != 1:
            (lengths, row_lengths), weights = split_lengths(nested_rng, actions.shape[0]), None
        else:
            lengths, weights = prefix_lengths_and_weights(nested_rng, actions.shape[0], c, loss_cfg, progress)
            row_lengths = lengths
        if augmenting:
            augmented = augment.augment_chunks(actions, jax.random.fold_in(nested_rng, 1), augment_cfg)
            actions = augment.gate_by_length(actions, augmented, row_lengths, augment_cfg, c.num_tokens)
        if accum_steps == 1:
            loss, grads = grads_of(state.params, actions, lengths, drop_rng, weights)
        else:
            def body(carry, xs):
                i, x, k = xs
                loss_i, grads_i = grads_of(state.params, x, k, jax.random.fold_in(drop_rng, i), weights)
                return jax.tree.map(jnp.add, carry, (loss_i, grads_i)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            xs = (jnp.arange(accum_steps), _split_micro(actions, accum_steps, mesh),
                  _split_micro(lengths, accum_steps, None if short_samples != 1 else mesh))
            (loss, grads), _ = jax.lax.scan(body, zeros, xs)
            loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
        new_state, decay = apply_gradients(state, grads, tx, ema_cfg)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
                   "ema_decay": decay}
        return new_state, metrics

    return train_step
