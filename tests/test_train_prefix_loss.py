"""Training options beyond the paper: several prefix lengths per example per step (encoder paid once), the extra
full-length decode, the sampled prefix-length distribution, and chunk augmentation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from oat_jax.config import OATConfig
from oat_jax.decoder import keep_length_distribution
from oat_jax.model import OATModel, init_params
from oat_jax.training import augment
from oat_jax.training.tokenizer_step import (check_loss_config, prefix_lengths_and_weights, reconstruction_loss,
                                             sample_short_lengths, split_reconstruction_loss, split_rows)

TINY = OATConfig(action_dim=3, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_width=16, enc_depth=1, enc_heads=2,
                 enc_dropout=0.0, dec_width=16, dec_depth=1, dec_heads=2, dec_ffn_dim=32, dec_dropout=0.0,
                 dec_attn_dropout=0.0, nested_dropout="uniform")


def _loss_cfg(prefix_samples=1, full_length_weight=0.0):
    return ml_collections.ConfigDict(dict(prefix_samples=prefix_samples, full_length_weight=full_length_weight))


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
def trained_like_params():
    return _trained_like(TINY)


@pytest.mark.parametrize("dec_patch", [1, 4])
def test_multi_prefix_loss_is_the_mean_of_single_prefix_losses(dec_patch):
    config = TINY.replace(dec_patch=dec_patch)
    params = _trained_like(config)
    model, x, rng = OATModel(config), _batch(config), jax.random.key(2)
    lengths = jnp.asarray(np.random.default_rng(1).integers(1, config.num_tokens + 1, (6, 3)), jnp.int32)
    singles = [float(reconstruction_loss(model, params, x, lengths[:, j], rng)) for j in range(3)]
    assert len(set(np.round(singles, 6))) > 1  # the prefix columns really differ
    multi = float(reconstruction_loss(model, params, x, lengths, rng))
    np.testing.assert_allclose(multi, np.mean(singles), rtol=1e-5)
    weights = jnp.asarray([0.2, 0.3, 0.5])
    np.testing.assert_allclose(float(reconstruction_loss(model, params, x, lengths, rng, weights)),
                               np.dot([0.2, 0.3, 0.5], singles), rtol=1e-5)


def test_decode_prefixes_matches_the_single_pass_forward(trained_like_params):
    model, x = OATModel(TINY), _batch(TINY)
    lengths = jnp.asarray([[1, 4], [2, 4], [3, 1], [4, 2], [1, 1], [2, 3]], jnp.int32)
    multi = model.apply({"params": trained_like_params}, x, lengths, method=OATModel.decode_prefixes)
    assert multi.shape == (6, 2, TINY.horizon, TINY.action_dim)
    for j in range(2):
        single, _ = model.apply({"params": trained_like_params}, x, lengths=lengths[:, j])
        np.testing.assert_allclose(multi[:, j], single, atol=1e-5)


@pytest.mark.parametrize("mode, power", [("uniform", 1.0), ("pow2", 1.0), ("power", -1.0), ("power", 2.0)])
def test_sampled_prefix_lengths_follow_the_configured_distribution(mode, power):
    config = TINY.replace(num_tokens=8, horizon=16, nested_dropout=mode, nested_dropout_power=power)
    lengths, weights = prefix_lengths_and_weights(jax.random.key(0), 4000, config, _loss_cfg(prefix_samples=3))
    assert lengths.shape == (4000, 3) and weights.shape == (3,)
    np.testing.assert_allclose(weights, 1 / 3)
    values, probs = keep_length_distribution(8, mode, power)
    expected = np.zeros(9)
    expected[values] = probs
    counts = np.bincount(np.asarray(lengths).ravel(), minlength=9)
    total = counts.sum()
    # Pearson chi-square over the support, and nothing outside it (9 cells at most: the 0.999 quantile is < 28).
    support = expected > 0
    chi2 = np.sum((counts[support] - total * expected[support]) ** 2 / (total * expected[support]))
    assert counts[~support].sum() == 0
    assert chi2 < 28.0, (counts, expected)
    # the columns are independent draws, not copies
    assert np.mean(np.asarray(lengths[:, 0]) == np.asarray(lengths[:, 1])) < 0.9


def test_full_length_column_and_weights():
    lengths, weights = prefix_lengths_and_weights(jax.random.key(0), 50, TINY, _loss_cfg(1, 0.4))
    assert lengths.shape == (50, 2)
    np.testing.assert_array_equal(lengths[:, 1], TINY.num_tokens)
    np.testing.assert_allclose(weights, [0.6, 0.4], rtol=1e-6)
    lengths, weights = prefix_lengths_and_weights(jax.random.key(0), 5, TINY, _loss_cfg(-1, 0.5))
    np.testing.assert_array_equal(lengths[0], [1, 2, 3, 4, 4])
    np.testing.assert_allclose(weights, [0.125, 0.125, 0.125, 0.125, 0.5])


def test_reference_and_oatx_keep_one_length_per_example():
    lengths, weights = prefix_lengths_and_weights(jax.random.key(0), 10, TINY, _loss_cfg())
    assert lengths.shape == (10,) and weights is None
    lengths, weights = prefix_lengths_and_weights(jax.random.key(0), 10, TINY.replace(nested_dropout="none"),
                                                  _loss_cfg(3, 0.5))
    assert weights is None
    np.testing.assert_array_equal(lengths, TINY.num_tokens)


@pytest.mark.parametrize("field, value", [("prefix_samples", 0), ("prefix_samples", -2), ("full_length_weight", 1.0),
                                          ("full_length_weight", -0.1), ("full_end", 1.5)])
def test_bad_loss_config_names_the_field(field, value):
    cfg = _loss_cfg()
    cfg[field] = value
    with pytest.raises(ValueError, match=f"config.loss.{field}"):
        check_loss_config(cfg, 8)


def test_short_samples_config_is_checked():
    for bad in (0, -2, 40):
        cfg = _loss_cfg()
        cfg.short_samples = bad
        with pytest.raises(ValueError, match="config.loss.short_samples"):
            check_loss_config(cfg, 8)
    for field, value in (("prefix_samples", 2), ("full_length_weight", 0.5), ("full_end", 0.9)):
        cfg = _loss_cfg()
        cfg.update({"short_samples": 3, field: value})
        with pytest.raises(ValueError, match=f"config.loss.{field}"):
            check_loss_config(cfg, 8)


def test_split_rows_follow_the_short_prefix_mass():
    cfg = _loss_cfg()
    config = TINY.replace(num_tokens=8, horizon=16, nested_dropout="power", nested_dropout_power=-1.0,
                          nested_dropout_full=0.9)
    assert split_rows(128, config, cfg) == 0  # short_samples 1: one draw per example, no split
    cfg.short_samples = 3
    values, probs = keep_length_distribution(8, "power", -1.0, 0.9)
    assert split_rows(128, config, cfg) == round(128 * probs[:-1].sum()) == 12
    assert split_rows(1000, config.replace(nested_dropout_full=0.5), cfg) == round(1000 * 0.5 * probs[:-1].sum()
                                                                                   / 0.1)
    assert split_rows(128, config.replace(nested_dropout="none"), cfg) == 0


@pytest.mark.parametrize("mode, power", [("power", -1.0), ("pow2", 1.0), ("uniform", 1.0)])
def test_short_lengths_follow_the_distribution_below_n(mode, power):
    config = TINY.replace(num_tokens=8, horizon=16, nested_dropout=mode, nested_dropout_power=power,
                          nested_dropout_full=0.9)
    lengths = np.asarray(sample_short_lengths(jax.random.key(0), 3000, config, 4))
    assert lengths.shape == (3000, 4) and lengths.dtype == np.int32
    values, probs = keep_length_distribution(8, mode, power)
    expected = np.zeros(9)
    expected[values[values < 8]] = probs[values < 8] / probs[values < 8].sum()
    counts = np.bincount(lengths.ravel(), minlength=9)
    support = expected > 0
    assert counts[~support].sum() == 0  # never N, never outside the support
    chi2 = np.sum((counts[support] - counts.sum() * expected[support]) ** 2 / (counts.sum() * expected[support]))
    assert chi2 < 25.0, (counts, expected)
    assert np.mean(lengths[:, 0] == lengths[:, 1]) < 0.9  # independent columns
    every = np.asarray(sample_short_lengths(jax.random.key(0), 5, config, -1))
    np.testing.assert_array_equal(every, np.broadcast_to(values[values < 8], (5, int(np.sum(values < 8)))))


def test_split_loss_weighs_every_row_equally(trained_like_params):
    model, x, rng = OATModel(TINY), _batch(TINY, batch=8), jax.random.key(3)
    short = jnp.asarray([[1, 2], [3, 1], [2, 2]], jnp.int32)
    full_rng, short_rng = jax.random.split(rng)
    full_loss = float(reconstruction_loss(model, trained_like_params, x[3:], jnp.full((5,), 4, jnp.int32), full_rng))
    columns = [float(reconstruction_loss(model, trained_like_params, x[:3], short[:, j], short_rng)) for j in range(2)]
    assert full_loss != columns[0] != columns[1]
    expected = (5 * full_loss + 3 * np.mean(columns)) / 8
    got = float(split_reconstruction_loss(model, trained_like_params, x, short, rng))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    none_short = float(split_reconstruction_loss(model, trained_like_params, x, short[:0], rng))
    np.testing.assert_allclose(none_short, float(reconstruction_loss(model, trained_like_params, x,
                                                                     jnp.full((8,), 4, jnp.int32), full_rng)),
                               rtol=1e-6)


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_train_step_with_short_samples_augments_only_the_full_length_rows(accum_steps):
    """The jitted step's loss on a split batch equals the split loss recomputed by hand: the first S rows of each
    micro-batch decoded at every length below N on real chunks (min_length = N), the other rows at N on augmented
    chunks."""
    import optax

    from oat_jax.normalizer import Normalizer
    from oat_jax.training.tokenizer_step import init_train_state, make_train_step

    config = TINY.replace(nested_dropout="power", nested_dropout_power=-1.0, nested_dropout_full=0.0)
    model = OATModel(config)
    tx = optax.sgd(1e-2)
    ema = ml_collections.ConfigDict(dict(power=0.75, max_decay=0.999))
    x = _batch(TINY, batch=16, seed=6)
    loss_cfg = _loss_cfg()
    loss_cfg.short_samples = -1
    aug = _aug(flip=1.0, splice=1.0)
    aug.min_length = -1
    rows = split_rows(16 // accum_steps, config, loss_cfg)
    _, probs = keep_length_distribution(4, "power", -1.0)
    assert rows == round(16 // accum_steps * probs[:-1].sum()) and 0 < rows < 16 // accum_steps
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-2), Normalizer.identity(3), ema,
                                   accum_steps=accum_steps, loss_cfg=loss_cfg, augment_cfg=aug))
    state = init_train_state(model, tx, 0)
    _, metrics = step(state, {"actions": x})

    drop_rng, nested_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    augmented = augment.augment_chunks(x, jax.random.fold_in(nested_rng, 1), aug)
    short_total = rows * accum_steps
    seen = jnp.concatenate([x[:short_total], augmented[short_total:]])  # short rows keep their real chunks
    short = jnp.broadcast_to(jnp.arange(1, 4, dtype=jnp.int32), (short_total, 3))

    def by_hand(chunks):  # micro-batch j: rows j, j + accum_steps, ...; its first `rows` rows are the short ones
        return np.mean([float(split_reconstruction_loss(
            model, state.params, chunks[j::accum_steps], short[j::accum_steps],
            drop_rng if accum_steps == 1 else jax.random.fold_in(drop_rng, j))) for j in range(accum_steps)])

    expected = by_hand(seen)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    assert by_hand(augmented) != pytest.approx(expected, rel=1e-4)  # the short rows' chunks do matter


def test_oatx_step_is_the_reference_step_whatever_short_samples_says():
    """OAT x keeps every row at N: with short_samples = 4 its train step is bit for bit the one-decode step."""
    import optax

    from oat_jax.normalizer import Normalizer
    from oat_jax.training.tokenizer_step import init_train_state, make_train_step

    config = TINY.replace(nested_dropout="none")
    model = OATModel(config)
    tx = optax.adam(1e-2)
    ema = ml_collections.ConfigDict(dict(power=0.75, max_decay=0.999))
    batch = {"actions": _batch(TINY, batch=16, seed=7)}
    out = []
    for short in (1, 4):
        cfg = _loss_cfg()
        cfg.short_samples = short
        step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-2), Normalizer.identity(3), ema,
                                       loss_cfg=cfg, augment_cfg=_aug(flip=0.5, splice=0.5)))
        state, metrics = step(init_train_state(model, tx, 0), batch)
        out.append((float(metrics["loss"]), jax.tree.leaves(state.params)))
    assert out[0][0] == out[1][0]
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_array_equal(a, b)


def _aug(flip=0.0, reverse=0.0, splice=0.0):
    return ml_collections.ConfigDict(dict(flip_prob=flip, reverse_prob=reverse, splice_prob=splice))


def test_augmentations_do_what_they_say():
    x = _batch(TINY, batch=400, seed=5)
    assert augment.augment_chunks(x, jax.random.key(0), _aug()) is x
    flipped = np.asarray(augment.augment_chunks(x, jax.random.key(0), _aug(flip=1.0)))
    ratio = flipped / np.asarray(x)  # every dimension of every chunk is multiplied by +1 or -1 as a whole
    np.testing.assert_allclose(np.abs(ratio), 1.0, rtol=1e-6)
    assert np.all(ratio.std(axis=1) < 1e-6)
    assert 0.4 < np.mean(ratio[:, 0] < 0) < 0.6
    reversed_ = np.asarray(augment.augment_chunks(x, jax.random.key(0), _aug(reverse=1.0)))
    np.testing.assert_array_equal(reversed_, np.asarray(x)[:, ::-1])
    half = np.asarray(augment.augment_chunks(x, jax.random.key(0), _aug(reverse=0.5)))
    changed = np.any(half != np.asarray(x), axis=(1, 2))
    assert 0.4 < changed.mean() < 0.6
    spliced = np.asarray(augment.augment_chunks(x, jax.random.key(1), _aug(splice=1.0)))
    src = np.asarray(x)
    for i in range(20):
        same = np.all(spliced[i] == src[i], axis=1)  # (H,) steps kept from the chunk itself
        cut = int(np.argmin(same)) if not same.all() else TINY.horizon
        assert same[:cut].all() and cut >= 1  # a prefix of at least one step is kept
        tail = spliced[i, cut:]
        if len(tail):  # the rest is the tail of one other chunk of the batch
            assert any(np.array_equal(tail, src[j, cut:]) for j in range(len(src)) if j != i)


def test_bad_augment_probability_names_the_field():
    with pytest.raises(ValueError, match="config.augment.flip_prob"):
        augment.check_config(_aug(flip=1.5))
    for bad in (0, -2, 5):
        cfg = _aug(flip=0.5)
        cfg.min_length = bad
        with pytest.raises(ValueError, match="config.augment.min_length"):
            augment.check_config(cfg, num_tokens=4)


def test_min_length_augments_only_examples_kept_at_that_many_tokens():
    x = _batch(TINY, batch=64, seed=3)
    cfg = _aug(flip=1.0, splice=1.0)
    augmented = augment.augment_chunks(x, jax.random.key(2), cfg)
    lengths = jnp.asarray(np.arange(64) % 4 + 1, jnp.int32)
    assert augment.gate_by_length(x, augmented, lengths, cfg, 4) is augmented  # min_length 1: every example
    cfg.min_length = 3
    gated = np.asarray(augment.gate_by_length(x, augmented, lengths, cfg, 4))
    long_ = np.asarray(lengths) >= 3
    np.testing.assert_array_equal(gated[long_], np.asarray(augmented)[long_])
    np.testing.assert_array_equal(gated[~long_], np.asarray(x)[~long_])
    assert np.any(np.asarray(augmented)[~long_] != np.asarray(x)[~long_])  # the gate did hold something back
    # several decodes per example: the shortest one decides
    columns = jnp.stack([lengths, jnp.full_like(lengths, 4)], axis=1)
    np.testing.assert_array_equal(np.asarray(augment.gate_by_length(x, augmented, columns, cfg, 4)), gated)
    cfg.min_length = -1  # = N: full-length examples only
    only_full = np.asarray(augment.gate_by_length(x, augmented, lengths, cfg, 4))
    full = np.asarray(lengths) == 4
    np.testing.assert_array_equal(only_full[full], np.asarray(augmented)[full])
    np.testing.assert_array_equal(only_full[~full], np.asarray(x)[~full])


def test_train_step_gates_augmentation_by_the_sampled_length():
    """In the train step, with min_length = N only full-length examples see augmented chunks: on a batch where
    every sampled length is short, the loss is the same as without augmentation (and differs with it ungated)."""
    import optax

    from oat_jax.normalizer import Normalizer
    from oat_jax.training.tokenizer_step import init_train_state, make_train_step

    config = TINY.replace(nested_dropout="power", nested_dropout_power=-30.0)  # P(k = 1) ~ 1
    model = OATModel(config)
    tx = optax.sgd(1e-2)
    normalizer = Normalizer.identity(config.action_dim)
    ema = ml_collections.ConfigDict(dict(power=0.75, max_decay=0.999))
    batch = {"actions": _batch(TINY, batch=16, seed=4)}
    results = {}
    for name, cfg in (("plain", None), ("gated", _aug(flip=1.0, splice=1.0)), ("on", _aug(flip=1.0, splice=1.0))):
        if name == "gated":
            cfg.min_length = -1
        step = jax.jit(make_train_step(model, tx, optax.constant_schedule(1e-2), normalizer, ema, augment_cfg=cfg))
        _, metrics = step(init_train_state(model, tx, 0), batch)
        results[name] = float(metrics["loss"])
    assert results["gated"] == results["plain"] and results["on"] != results["plain"]


def test_full_length_mass_moves_the_distribution_and_its_schedule():
    config = TINY.replace(num_tokens=8, horizon=16, nested_dropout="power", nested_dropout_power=-1.0,
                          nested_dropout_full=0.5)
    values, probs = keep_length_distribution(8, "power", -1.0, 0.5)
    base = np.arange(1, 9, dtype=np.float64) ** -1.0
    np.testing.assert_allclose(probs, 0.5 * base / base.sum() + 0.5 * (values == 8))
    ramp = _loss_cfg()
    ramp.full_end = 0.9
    for progress, full in ((0.0, 0.5), (0.5, 0.7), (1.0, 0.9)):
        lengths, _ = prefix_lengths_and_weights(jax.random.key(1), 20000, config, ramp, jnp.float32(progress))
        expected = (1 - full) * base / base.sum()
        expected[-1] += full
        counts = np.bincount(np.asarray(lengths), minlength=9)[1:]
        np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.012)
    # without a schedule the mass is the model's, whatever the progress
    fixed, _ = prefix_lengths_and_weights(jax.random.key(1), 20000, config, _loss_cfg(), 1.0)
    assert abs(np.mean(np.asarray(fixed) == 8) - probs[-1]) < 0.012


def test_paper_variant_is_the_reference_and_the_default_goes_beyond_it():
    from experiments.configs import oat as oat_configs
    from oat_jax.config import OATConfig as Config

    paper = oat_configs.get_config("paper")
    reference = Config()  # the paper's tokenizer
    for field in ("nested_dropout", "nested_dropout_power", "nested_dropout_full", "enc_patch", "dec_patch",
                  "dec_code_embed", "nested_dropout_detach", "nested_dropout_detach_scale", "enc_width",
                  "dec_depth"):
        assert paper.model[field] == getattr(reference, field), field
    assert not augment.is_active(paper.augment)
    loss_cfg = paper.loss
    lengths, weights = prefix_lengths_and_weights(jax.random.PRNGKey(0), 64, reference, loss_cfg)
    assert lengths.shape == (64,) and weights is None  # one sampled length per example, as in the reference

    default = oat_configs.get_config("")
    cfg = Config(**{k: v for k, v in default.model.to_dict().items() if k != "action_dim"}, action_dim=4)
    values, probs = keep_length_distribution(cfg.num_tokens, cfg.nested_dropout, cfg.nested_dropout_power,
                                             cfg.nested_dropout_full)
    assert list(values) == list(range(1, cfg.num_tokens + 1)) and np.all(probs > 0)  # every k is trained
    assert probs[-1] == probs.max() and augment.is_active(default.augment)
    assert paper.loss.short_samples == 1 and default.loss.short_samples != 1  # split batches are beyond the paper
    assert (paper.loss.short_weighting, paper.loss.monotone_weight) == ("uniform", 0.0)
    check_loss_config(default.loss, cfg.num_tokens)
    oatx = oat_configs.get_config("oatx")
    assert oatx.model.nested_dropout == "none" and oatx.augment.to_dict() == default.augment.to_dict()


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
