"""The tokenizer's training objective (oat_jax/training/tokenizer/objective.py): the prefix-length distribution, the
sampled and split batch plans, the split loss with its weights and hinge, the gradient detach, validation, the training
configs' objectives, and chunk augmentation in the train step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from oat_helpers import random_params, smooth_actions

from oat_jax.config import OATConfig
from oat_jax.model import OATModel, init_params
from oat_jax.training.tokenizer import augment
from oat_jax.training.tokenizer.objective import Objective, detach_leading, keep_length_distribution, monotone_penalty
from oat_jax.training.tokenizer.step import init_train_state, make_train_step

TINY = OATConfig(action_dim=3, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=16, enc_depth=1, enc_heads=2,
                 enc_dropout=0.0, dec_width=16, dec_depth=1, dec_heads=2, dec_ffn_dim=32, dec_dropout=0.0,
                 dec_attn_dropout=0.0)
SPLIT = Objective(nested_dropout="power", power=-1.0, split=True)
EMA = ml_collections.ConfigDict(dict(power=0.75, max_decay=0.999))


def _batch(config, batch=6, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, config.horizon, config.action_dim)),
                       jnp.float32)


def _trained_like(config):
    """Params with non-zero heads (freshly initialised heads are zero, so every decode would be equal)."""
    params = init_params(config, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def params():
    return _trained_like(TINY)


def _mse(params, x, lengths, rng, config=TINY):
    """The MSE of the plain forward pass at `lengths`, dropout on (what every decode of the objective must be)."""
    recon, _ = OATModel(config).apply({"params": params}, x, deterministic=False, lengths=lengths,
                                      rngs={"dropout": rng})
    return float(jnp.mean(jnp.square(recon - x)))


# ----- the distribution of k -----
def test_distribution_modes_power_probabilities_full_mass_and_non_power_of_two_n():
    values, probs = keep_length_distribution(4, "power", power=2.0)
    np.testing.assert_array_equal(values, [1, 2, 3, 4])
    np.testing.assert_allclose(probs, np.array([1, 4, 9, 16]) / 30)
    np.testing.assert_array_equal(keep_length_distribution(6, "pow2")[0], [1, 2, 4, 6])
    np.testing.assert_array_equal(keep_length_distribution(8, "none")[0], [8])
    values, probs = keep_length_distribution(8, "power", -1.0, 0.5)
    base = np.arange(1, 9, dtype=np.float64) ** -1.0
    np.testing.assert_allclose(probs, 0.5 * base / base.sum() + 0.5 * (values == 8))
    with pytest.raises(ValueError, match="nested dropout mode"):
        keep_length_distribution(8, "random")


@pytest.mark.parametrize("mode, power, full", [("uniform", 1.0, 0.0), ("pow2", 1.0, 0.0), ("power", -1.0, 0.0),
                                               ("power", 2.0, 0.0), ("power", -1.0, 0.5)])
def test_sampled_plan_draws_each_row_from_the_configured_distribution(mode, power, full):
    objective = Objective(nested_dropout=mode, power=power, full=full)
    lengths = np.asarray(objective.row_lengths(jax.random.key(0), 6000, 8))
    assert lengths.shape == (6000,) and lengths.dtype == np.int32
    values, probs = objective.distribution(8)
    expected = np.zeros(9)
    expected[values] = probs
    counts = np.bincount(lengths, minlength=9)
    support = expected > 0
    # Pearson chi-square over the support (9 cells at most: the 0.999 quantile is < 28), nothing outside it
    chi2 = np.sum((counts[support] - 6000 * expected[support]) ** 2 / (6000 * expected[support]))
    assert counts[~support].sum() == 0 and chi2 < 28.0, (counts, expected)


def test_unordered_objective_decodes_every_row_at_n_and_the_model_keeps_all_tokens_by_default(params):
    unordered = Objective(nested_dropout="none")
    assert not unordered.ordered
    np.testing.assert_array_equal(unordered.row_lengths(jax.random.key(0), 10, 4), 4)
    x = _batch(TINY)
    loss = float(unordered.loss(OATModel(TINY), params, x, jnp.full((6,), 4, jnp.int32), jax.random.key(1)))
    assert loss == pytest.approx(_mse(params, x, None, jax.random.key(1)), rel=1e-6)
    _, aux = OATModel(TINY).apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(aux["lengths"], 4)  # the model samples nothing: lengths come from the objective


# ----- the split plan -----
def test_split_rows_follow_the_short_prefix_mass():
    objective = Objective(nested_dropout="power", power=-1.0, full=0.9, split=True)
    values, probs = keep_length_distribution(8, "power", -1.0, 0.9)
    assert objective.short_rows(128, 8) == round(128 * probs[:-1].sum()) == 12
    half = Objective(nested_dropout="power", power=-1.0, full=0.5, split=True)
    assert half.short_rows(1000, 8) == round(1000 * 0.5 * probs[:-1].sum() / 0.1)
    assert Objective(nested_dropout="power", power=-1.0, full=0.9).short_rows(128, 8) == 0  # sampled plan
    columns, weights = objective.short_lengths(8)
    np.testing.assert_array_equal(columns, np.arange(1, 8))  # every k < N
    np.testing.assert_allclose(weights, probs[:-1] / probs[:-1].sum())  # P(k | k < N)
    np.testing.assert_array_equal(Objective(split=True).short_lengths(8)[0], [1, 2, 4])  # pow2's support below N


def test_split_row_lengths_put_the_short_rows_first():
    rows = SPLIT.short_rows(32, 4)
    assert 0 < rows < 32
    lengths = np.asarray(SPLIT.row_lengths(jax.random.key(0), 32, 4))
    np.testing.assert_array_equal(lengths[:rows], 1)  # their shortest decode
    np.testing.assert_array_equal(lengths[rows:], 4)


@pytest.mark.parametrize("dec_patch", [1, 4])
def test_column_losses_are_the_single_pass_losses_of_each_column(dec_patch):
    config = TINY.replace(dec_patch=dec_patch)
    params, x, rng = _trained_like(config), _batch(config), jax.random.key(2)
    lengths = jnp.asarray([[1, 4, 2], [2, 4, 1], [3, 1, 1], [4, 2, 3], [1, 1, 4], [2, 3, 2]], jnp.int32)
    got = np.asarray(SPLIT.column_losses(OATModel(config), params, x, lengths, rng))
    singles = [_mse(params, x, lengths[:, j], rng, config) for j in range(3)]
    assert len(set(np.round(singles, 6))) == 3  # the prefix columns really differ
    np.testing.assert_allclose(got, singles, rtol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_split_loss_by_hand(params, weight):
    """Every row weighs 1/B: (B - S) full-length rows and S short rows, each decoded at every k < N with weights
    P(k | k < N), plus the hinge."""
    objective = Objective(nested_dropout="power", power=-1.5, split=True, monotone_weight=weight)
    margin = 0.05  # the hinge's fixed margin
    model, x, rng = OATModel(TINY), _batch(TINY, batch=16, seed=4), jax.random.key(5)
    short = objective.short_rows(16, 4)
    assert 0 < short < 16
    full_rng, short_rng = jax.random.split(rng)
    full = _mse(params, x[short:], jnp.full((16 - short,), 4, jnp.int32), full_rng)
    columns = np.asarray([_mse(params, x[:short], jnp.full((short,), k, jnp.int32), short_rng) for k in (1, 2, 3)])
    _, probs = keep_length_distribution(4, "power", -1.5)
    p = probs[:3] / probs[:3].sum()
    hinge = sum(max(0.0, columns[j] - (1 - margin) * columns[j - 1]) for j in (1, 2))
    expected = ((16 - short) * full + short * (p @ columns + weight * hinge)) / 16
    got = float(objective.loss(model, params, x, objective.row_lengths(rng, 16, 4), rng))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert p @ columns != pytest.approx(columns.mean(), rel=1e-4)  # the weights do matter
    if weight:
        assert hinge > 0  # these params decode some k worse than k - 1, so the hinge is active


def test_monotone_penalty_is_zero_in_order_and_a_hinge_out_of_order():
    ordered = jnp.asarray([0.05, 0.04, 0.03], jnp.float32)
    assert float(monotone_penalty(ordered, 0.0)) == 0.0
    assert float(monotone_penalty(ordered, 0.1)) == 0.0  # 0.04 > 0.045 and 0.03 > 0.036 are both false
    bumped = jnp.asarray([0.05, 0.03, 0.036, 0.02], jnp.float32)
    np.testing.assert_allclose(float(monotone_penalty(bumped, 0.0)), 0.006, rtol=1e-5)
    np.testing.assert_allclose(float(monotone_penalty(bumped, 0.1)), 0.036 - 0.027, rtol=1e-5)
    grad = np.asarray(jax.grad(lambda v: monotone_penalty(v, 0.0))(bumped))
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, 0.0])  # only the longer prefix of the bump is pushed down


# ----- the detach -----
N = 8
DETACH_CONFIG = OATConfig(action_dim=3, horizon=8, num_tokens=N, levels=(5, 4, 3), enc_width=32, enc_depth=2,
                          enc_heads=2, dec_width=32, dec_depth=2, dec_heads=2, dec_ffn_dim=64)


def _codes_grad(count, scale, lengths):
    """d(sum of squared decoder outputs) / d codes (B, N, d) and the outputs, codes detached as the objective does."""
    decoder_params = {"params": random_params(DETACH_CONFIG)}
    codes = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (len(lengths), N, 3)), jnp.float32)
    lengths = jnp.asarray(lengths, jnp.int32)
    model = OATModel(DETACH_CONFIG)
    out = lambda c: model.apply(decoder_params, detach_leading(c, lengths, count, scale), lengths,  # noqa: E731
                                method=OATModel.decode)
    return np.asarray(jax.grad(lambda c: jnp.sum(jnp.square(out(c))))(codes)), np.asarray(out(codes))


def test_full_length_decodes_stop_the_leading_codes_gradient_and_nothing_else():
    lengths = [N, 1, 2, 3, N - 1, N]
    grad, out = _codes_grad(2, 0.0, lengths)
    ref_grad, ref_out = _codes_grad(0, 0.0, lengths)
    np.testing.assert_array_equal(out, ref_out)  # the forward pass is unchanged
    for row, k in enumerate(lengths):
        if k == N:
            assert not np.any(grad[row, :2])  # the leading codes get nothing from a full-length decode
            np.testing.assert_array_equal(grad[row, 2:], ref_grad[row, 2:])
            assert np.all(np.abs(ref_grad[row, :2]).max(axis=-1) > 0)  # ... which they would have had
        else:  # shorter prefixes train every kept code, the leading ones included
            np.testing.assert_array_equal(grad[row], ref_grad[row])
            assert np.all(np.abs(grad[row, :k]).max(axis=-1) > 0) and not np.any(grad[row, k:])


def test_a_scale_passes_that_share_of_the_full_length_gradient():
    grad, out = _codes_grad(2, 0.2, [N, 2, N])
    ref_grad, ref_out = _codes_grad(0, 0.0, [N, 2, N])
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(grad[[0, 2], :2], 0.2 * ref_grad[[0, 2], :2], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grad[[0, 2], 2:], ref_grad[[0, 2], 2:])
    np.testing.assert_array_equal(grad[1], ref_grad[1])


def test_the_encoder_gradient_changes_only_through_full_length_rows():
    params = random_params(DETACH_CONFIG)
    actions = jnp.asarray(smooth_actions(6, DETACH_CONFIG.horizon, DETACH_CONFIG.action_dim))
    model = OATModel(DETACH_CONFIG)

    def encoder_grad(objective, lengths):
        loss = lambda p: objective.loss(model, p, actions, jnp.asarray(lengths, jnp.int32), jax.random.key(0))
        return jax.tree.leaves(jax.grad(loss)(params)["encoder"])

    plain = Objective(nested_dropout="power", power=-1.0)
    detached = Objective(nested_dropout="power", power=-1.0, detach_tokens=2)
    short = [1, 3, 2, 7, 5, 4]  # every row short: nothing is detached
    for a, b in zip(encoder_grad(detached, short), encoder_grad(plain, short)):
        np.testing.assert_array_equal(a, b)
    mixed = [1, N, 2, N, 5, 4]
    assert any(not np.allclose(a, b) for a, b in zip(encoder_grad(detached, mixed), encoder_grad(plain, mixed)))


# ----- validation and the training configs -----
@pytest.mark.parametrize("fields, match", [
    (dict(nested_dropout="random"), "nested_dropout"), (dict(full=1.5), "full"),
    (dict(split=True, monotone_weight=-1.0), "monotone_weight"),
    (dict(detach_tokens=-1), "detach_tokens"), (dict(detach_tokens=4), "detach_tokens"),
    (dict(detach_tokens=1.0), "detach_tokens"), (dict(detach_tokens=True), "detach_tokens"),
    # inert or contradictory combinations
    (dict(monotone_weight=0.1), "needs config.objective.split=True"),
    (dict(power=-1.5), "power has no effect"),
    (dict(nested_dropout="none", split=True), "config.objective.split has no effect"),
    (dict(nested_dropout="none", detach_tokens=1), "config.objective.detach_tokens has no effect"),
    (dict(nested_dropout="power", full=1.0, split=True), "no short rows")])
def test_bad_objectives_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        Objective(**fields).validate(4)


def test_unknown_objective_fields_are_named():
    with pytest.raises(ValueError, match=r"Unknown config.objective fields \['short_samples'\]"):
        Objective.from_dict({"nested_dropout": "pow2", "short_samples": -1})


def test_paper_variant_is_the_reference_and_the_default_goes_beyond_it():
    from experiments.configs import oat as oat_configs

    paper = oat_configs.get_config("paper")
    assert Objective.from_dict(paper.objective) == Objective()  # pow2, one sampled k per row, nothing else
    assert not augment.is_active(paper.augment)
    default = Objective.from_dict(oat_configs.get_config("").objective)
    default.validate(8)
    values, probs = default.distribution(8)
    assert list(values) == list(range(1, 9)) and np.all(probs > 0)  # every k is trained
    assert probs[-1] == probs.max() and default.split and default.monotone_weight > 0
    assert default.detach_tokens == 1  # token 1 detached from full-length decodes
    assert augment.is_active(oat_configs.get_config("").augment)
    for unordered in ("oatx", "quest", "paper,oatx", "paper,quest"):
        objective = Objective.from_dict(oat_configs.get_config(unordered).objective)
        assert objective == Objective(nested_dropout="none"), unordered
        objective.validate(8)
    assert oat_configs.get_config("oatx").augment.to_dict() == oat_configs.get_config("").augment.to_dict()


def test_paper_variant_needs_a_dataset_and_accepts_either_documented_form():
    from experiments.configs import oat as oat_configs
    from oat_jax.training.data import dataset_spec

    paper = oat_configs.get_config("paper")
    with pytest.raises(ValueError, match="needs a dataset: add --config.data.path"):
        dataset_spec(paper.data)
    paper.data.update(name="libero_10", data_dir="/data/tfds")  # the documented name form
    spec = dataset_spec(paper.data)
    assert (spec.name, spec.data_dir) == ("libero_10", "/data/tfds")
    paper.data.update(name="", path="/data/rlds/libero_10")  # the documented path form
    assert dataset_spec(paper.data).path == "/data/rlds/libero_10"
    assert dataset_spec(oat_configs.get_config("").data).path  # the default: the embedded dataset


def test_configs_saved_with_the_training_fields_still_load():
    """Tokenizer configs written before the objective module held nested dropout and a code-embedding switch."""
    old = dict(TINY.to_dict(), nested_dropout="power", nested_dropout_power=-1.5, nested_dropout_full=0.9,
               nested_dropout_detach=1, nested_dropout_detach_scale=0.3, dec_code_embed=False)
    assert OATConfig.from_dict(old) == TINY
    with pytest.raises(ValueError, match="dec_code_embed=True"):
        OATConfig.from_dict(dict(old, dec_code_embed=True))
    with pytest.raises(ValueError, match="Unknown OATConfig fields"):
        OATConfig.from_dict(dict(old, bogus=1))


# ----- the train step: the plan and augmentation together -----
def _aug(flip=0.0, splice=0.0):
    return ml_collections.ConfigDict(dict(flip_prob=flip, splice_prob=splice))


def test_split_train_step_augments_only_the_full_length_rows():
    """The jitted step's loss equals the objective's loss recomputed by hand: the batch's first S rows decoded at
    every k < N on real chunks, the other rows at N on augmented chunks."""
    model, tx = OATModel(TINY), optax.sgd(1e-2)
    x = _batch(TINY, batch=16, seed=6)
    aug = _aug(flip=1.0, splice=1.0)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-2), EMA, SPLIT, aug))
    state = init_train_state(model, tx, 0).replace(params=_trained_like(TINY))
    _, metrics = step(state, {"actions": x})

    drop_rng, nested_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    augmented = augment.augment_chunks(x, jax.random.fold_in(nested_rng, 1), aug)
    short = SPLIT.short_rows(16, 4)
    seen = jnp.concatenate([x[:short], augmented[short:]])  # short rows keep their real chunks

    def by_hand(chunks):
        return float(SPLIT.loss(model, state.params, chunks, jnp.zeros((16,), jnp.int32), drop_rng))

    expected = by_hand(seen)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    assert by_hand(augmented) != pytest.approx(expected, rel=1e-4)  # the short rows' chunks do matter


def test_sampled_train_step_gates_augmentation_by_the_drawn_length():
    """Only rows drawn at N see augmented chunks: when every drawn length is short, the loss is the one without
    augmentation; when every drawn length is N, it differs."""
    model, tx = OATModel(TINY), optax.sgd(1e-2)
    batch = {"actions": _batch(TINY, batch=16, seed=4)}
    results = {}
    for power in (-30.0, 30.0):  # P(k = 1) ~ 1, then P(k = N) ~ 1
        objective = Objective(nested_dropout="power", power=power)
        for name, cfg in (("plain", None), ("augmented", _aug(1.0, 1.0))):
            step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-2), EMA, objective, cfg))
            _, metrics = step(init_train_state(model, tx, 0).replace(params=_trained_like(TINY)), batch)
            results[power, name] = float(metrics["loss"])
    assert results[-30.0, "augmented"] == results[-30.0, "plain"]
    assert results[30.0, "augmented"] != results[30.0, "plain"]


def test_augmentations_do_what_they_say():
    x = _batch(TINY, batch=400, seed=5)
    assert augment.augment_chunks(x, jax.random.key(0), _aug()) is x
    flipped = np.asarray(augment.augment_chunks(x, jax.random.key(0), _aug(flip=1.0)))
    ratio = flipped / np.asarray(x)  # every dimension of every chunk is multiplied by +1 or -1 as a whole
    np.testing.assert_allclose(np.abs(ratio), 1.0, rtol=1e-6)
    assert np.all(ratio.std(axis=1) < 1e-6)
    assert 0.4 < np.mean(ratio[:, 0] < 0) < 0.6
    half = np.asarray(augment.augment_chunks(x, jax.random.key(0), _aug(flip=0.5)))
    changed = np.any(half != np.asarray(x), axis=(1, 2))
    assert 0.3 < changed.mean() < 0.6  # half are chosen, and 1/2**3 of those draw no sign change at all
    spliced = np.asarray(augment.augment_chunks(x, jax.random.key(1), _aug(splice=1.0)))
    src = np.asarray(x)
    for i in range(20):
        same = np.all(spliced[i] == src[i], axis=1)  # (H,) steps kept from the chunk itself
        cut = int(np.argmin(same)) if not same.all() else TINY.horizon
        assert same[:cut].all() and cut >= 1  # a prefix of at least one step is kept
        tail = spliced[i, cut:]
        if len(tail):  # the rest is the tail of one other chunk of the batch
            assert any(np.array_equal(tail, src[j, cut:]) for j in range(len(src)) if j != i)


def test_bad_augment_settings_name_the_field():
    with pytest.raises(ValueError, match="config.augment.flip_prob"):
        augment.check_config(_aug(flip=1.5))
    with pytest.raises(ValueError, match="config.augment.splice_prob"):
        augment.check_config(_aug(splice=-0.1))


def test_only_full_length_examples_are_augmented():
    x = _batch(TINY, batch=64, seed=3)
    augmented = augment.augment_chunks(x, jax.random.key(2), _aug(flip=1.0, splice=1.0))
    lengths = jnp.asarray(np.arange(64) % 4 + 1, jnp.int32)
    only_full = np.asarray(augment.gate_by_length(x, augmented, lengths, 4))
    full = np.asarray(lengths) == 4
    assert np.any(np.asarray(augmented)[~full] != np.asarray(x)[~full])  # the gate did hold something back
    np.testing.assert_array_equal(only_full[full], np.asarray(augmented)[full])
    np.testing.assert_array_equal(only_full[~full], np.asarray(x)[~full])
