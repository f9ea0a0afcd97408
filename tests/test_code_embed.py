"""`dec_code_embed`: a learned per-(position, token id) embedding added to the decoder's kept latent slots."""

import jax
import jax.numpy as jnp
import numpy as np
from oat_helpers import TINY, initial_params, random_params, smooth_actions

from oat_jax import Normalizer, OATModel, OATTokenizer
from oat_jax.model import param_count

EMBED = TINY.replace(dec_code_embed=True)
N = TINY.num_tokens


def _detokenize(config, params, tokens, k):
    return np.asarray(OATModel(config).apply({"params": params}, jnp.asarray(tokens), k,
                                              method=OATModel.detokenize))


def test_the_table_is_one_row_per_position_and_id_and_starts_at_zero():
    params = initial_params(EMBED)
    table = params["decoder"]["code_embed"]
    assert table.shape == (N, TINY.vocab_size, TINY.dec_width) and not np.any(np.asarray(table))
    assert param_count(params) - param_count(initial_params(TINY)) == table.size
    # Zero rows: the same forward as the reference decoder with the other params.
    reference = {**params, "decoder": {k: v for k, v in params["decoder"].items() if k != "code_embed"}}
    actions = jnp.asarray(smooth_actions(4, TINY.horizon, TINY.action_dim))
    out, aux = OATModel(EMBED).apply({"params": params}, actions)
    ref, ref_aux = OATModel(TINY).apply({"params": reference}, actions)
    np.testing.assert_array_equal(aux["tokens"], ref_aux["tokens"])
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_a_row_changes_exactly_the_decodes_that_keep_its_position_and_id():
    params = random_params(EMBED)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, TINY.vocab_size, size=(6, N))
    pos, row = 2, 0
    tokens[1:, pos] = (tokens[row, pos] + 1 + np.arange(5)) % TINY.vocab_size  # only row 0 has this id here
    table = params["decoder"]["code_embed"]
    bumped = {**params, "decoder": {**params["decoder"],
                                    "code_embed": table.at[pos, tokens[row, pos]].add(1.0)}}
    for k in range(1, N + 1):
        delta = np.abs(_detokenize(EMBED, bumped, tokens, k) - _detokenize(EMBED, params, tokens, k)).max(axis=(1, 2))
        if k > pos:  # the slot is kept: only the example with that id at that position moves
            assert delta[row] > 1e-3 and np.all(delta[1:] == 0), (k, delta)
        else:  # the slot is masked: nothing moves
            assert np.all(delta == 0), (k, delta)


def test_the_gradient_reaches_only_the_rows_that_were_used():
    params = random_params(EMBED)
    actions = jnp.asarray(smooth_actions(5, TINY.horizon, TINY.action_dim))
    model = OATModel(EMBED)
    loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, actions, lengths=3)[0] - actions))
    grad = np.asarray(jax.grad(loss)(params)["decoder"]["code_embed"])
    tokens = np.asarray(model.apply({"params": params}, actions)[1]["tokens"])
    used = np.zeros(grad.shape[:2], bool)
    for i in range(3):
        used[i, tokens[:, i]] = True
    nonzero = np.abs(grad).max(axis=-1) > 0
    assert np.array_equal(nonzero, used)


def test_a_tokenizer_with_the_table_saves_and_loads(tmp_path):
    normalizer = Normalizer.fit(smooth_actions(32, TINY.horizon, TINY.action_dim), "limits")
    tok = OATTokenizer(EMBED, random_params(EMBED), normalizer)
    tok.save(str(tmp_path / "tok"))
    loaded = OATTokenizer.load(str(tmp_path / "tok"))
    assert loaded.config.dec_code_embed
    tokens = np.random.default_rng(1).integers(0, TINY.vocab_size, size=(3, N))
    for k in (1, 5, N):
        np.testing.assert_array_equal(loaded.detokenize(tokens, k)[0], tok.detokenize(tokens, k)[0])


def test_the_training_config_field_reaches_the_model():
    from experiments.configs import oat as oat_configs
    from oat_jax.training.tokenizer_step import model_config

    cfg = oat_configs.get_config("test")
    assert not model_config(cfg.model, 4).dec_code_embed  # off unless asked for
    cfg.model.dec_code_embed = True
    config = model_config(cfg.model, 4)
    assert config.dec_code_embed and "code_embed" in initial_params(config)["decoder"]
