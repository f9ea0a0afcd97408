"""Token policy model and sampler: cached == uncached decoding, top-k, special tokens, EOS, teacher forcing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oat_jax.action_tokenizers.protocol import PAD_ID
from oat_jax.policy.model import PolicyConfig, TokenPolicyModel, init_params, teacher_forcing
from oat_jax.policy.sampling import SamplingConfig, Sampler, choose_next, sample_reference


def tiny_config(**kw):
    fields = dict(vocab_size=20, max_tokens=6, obs_dim=5, n_obs_steps=2, width=32, depth=2, num_heads=2,
                  state_hidden=16, dropout=0.0)
    fields.update(kw)
    return PolicyConfig(**fields)


def observation(batch, config, seed=1):
    return {"state": jax.random.normal(jax.random.PRNGKey(seed), (batch, config.n_obs_steps, config.obs_dim))}


@pytest.mark.parametrize("variable_length,top_k", [(False, 5), (True, 0)])
def test_cached_sampling_equals_uncached_full_sequence_decoding(variable_length, top_k):
    config = tiny_config(variable_length=variable_length)
    params = init_params(config, jax.random.PRNGKey(0))
    sampling = SamplingConfig(temperature=1.0, top_k=top_k)
    sampler = Sampler(config, sampling)
    obs = observation(4, config)
    for k in (3, config.max_tokens):
        rng = jax.random.PRNGKey(10 + k)
        cached = sampler(params, obs, rng, k)
        reference = sample_reference(sampler.model, params, obs, rng, k, sampling)
        np.testing.assert_array_equal(np.asarray(cached[0]), np.asarray(reference[0]))
        np.testing.assert_array_equal(np.asarray(cached[1]), np.asarray(reference[1]))
    assert sampler.trace_count == 1  # every k shares one compiled function


def test_cached_step_logits_match_full_forward():
    config = tiny_config()
    params = init_params(config, jax.random.PRNGKey(0))
    model = TokenPolicyModel(config)
    obs = observation(3, config)
    inputs = jnp.concatenate([jnp.full((3, 1), config.bos_id), jax.random.randint(
        jax.random.PRNGKey(2), (3, config.seq_len - 1), 0, config.vocab_size)], axis=1).astype(jnp.int32)
    full = model.apply({"params": params}, obs, inputs)
    memory = model.apply({"params": params}, obs, method=TokenPolicyModel.encode)
    mem_kv = model.apply({"params": params}, memory, method=TokenPolicyModel.memory_kv)
    from oat_jax.policy.model import init_cache
    cache = init_cache(config, 3)
    step = jax.jit(lambda ids, pos, cache: model.apply({"params": params}, ids, pos, cache, mem_kv,
                                                       method=TokenPolicyModel.decode_step))
    for pos in range(config.seq_len):
        logits, cache = step(inputs[:, pos], jnp.int32(pos), cache)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, pos]), atol=1e-4, rtol=1e-4)


def test_top_k_never_samples_outside_the_top_k():
    config = tiny_config(vocab_size=50)
    logits = jax.random.normal(jax.random.PRNGKey(123), (256, config.embed_size)) * 3.0
    top = np.argsort(-np.asarray(logits[:, :config.vocab_size]), axis=1)[:, :4]
    for i in range(20):
        ids = np.asarray(choose_next(logits, jax.random.PRNGKey(i), jnp.int32(1), config, SamplingConfig(1.5, 4)))
        assert all(ids[b] in top[b] for b in range(len(ids)))
    # without top-k, ids outside the top 4 do occur (the check above can fail)
    ids = np.asarray(choose_next(logits, jax.random.PRNGKey(0), jnp.int32(1), config, SamplingConfig(1.5, 0)))
    assert any(ids[b] not in top[b] for b in range(len(ids)))


@pytest.mark.parametrize("variable_length", [False, True])
@pytest.mark.parametrize("top_k", [0, 3])
def test_special_tokens_are_never_sampled(variable_length, top_k):
    config = tiny_config(variable_length=variable_length)
    logits = jnp.zeros((512, config.embed_size)).at[:, config.bos_id].set(100.0)
    if variable_length:
        logits = logits.at[:, config.eos_id].set(100.0)
    ids = np.asarray(choose_next(logits, jax.random.PRNGKey(0), jnp.int32(0), config, SamplingConfig(1.0, top_k)))
    assert ids.min() >= 0 and ids.max() < config.vocab_size  # BOS never; EOS not at step 0
    later = np.asarray(choose_next(logits, jax.random.PRNGKey(1), jnp.int32(2), config, SamplingConfig(1.0, top_k)))
    assert not np.any(later == config.bos_id)
    if variable_length:
        assert np.all(later == config.eos_id)  # EOS may end a sequence after its first token
    greedy = np.asarray(choose_next(logits, jax.random.PRNGKey(1), jnp.int32(2), config, SamplingConfig(0.0, 0)))
    assert not np.any(greedy == config.bos_id)


def test_eos_ends_variable_length_sequences():
    config = tiny_config(vocab_size=3, max_tokens=8, variable_length=True, depth=1)
    params = init_params(config, jax.random.PRNGKey(0))
    # a zero final-norm scale makes every logit 0: uniform over the 3 ids + EOS, so sequences end at random lengths
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.zeros_like(x) if "final_norm" in jax.tree_util.keystr(p) else x, params)
    sampling = SamplingConfig(1.0, 0)
    obs = observation(64, config)
    sampler = Sampler(config, sampling)
    tokens, lengths = sampler(params, obs, jax.random.PRNGKey(3))
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    assert lengths.min() >= 1 and lengths.max() <= config.max_tokens
    assert len(np.unique(lengths)) > 3  # EOS was drawn at many different positions
    kept = np.arange(config.max_tokens)[None, :] < lengths[:, None]
    assert np.all((tokens >= 0) & (tokens < config.vocab_size) | ~kept)  # no EOS/BOS inside a sequence
    assert np.all(tokens[~kept] == PAD_ID)
    reference = sample_reference(sampler.model, params, obs, jax.random.PRNGKey(3), None, sampling)
    np.testing.assert_array_equal(tokens, np.asarray(reference[0]))
    # a cap of k tokens stops sequences that have not ended by then
    _, capped = sampler(params, obs, jax.random.PRNGKey(3), 2)
    assert np.asarray(capped).max() <= 2


def test_teacher_forcing_layout():
    fixed = tiny_config(max_tokens=4)
    tokens = jnp.array([[5, 6, 7, 8]], jnp.int32)
    inputs, targets, mask = teacher_forcing(tokens, jnp.array([4]), fixed)
    assert inputs.tolist() == [[fixed.bos_id, 5, 6, 7]] and targets.tolist() == [[5, 6, 7, 8]]
    assert mask.tolist() == [[1, 1, 1, 1]]
    var = tiny_config(max_tokens=4, variable_length=True)
    tokens = jnp.array([[5, 6, PAD_ID, PAD_ID]], jnp.int32)
    inputs, targets, mask = teacher_forcing(tokens, jnp.array([2]), var)
    assert inputs.tolist() == [[var.bos_id, 5, 6, 0, 0]]
    assert targets[0, :3].tolist() == [5, 6, var.eos_id] and mask.tolist() == [[1, 1, 1, 0, 0]]


def test_config_validation_messages():
    with pytest.raises(ValueError, match="observation"):
        PolicyConfig(vocab_size=10, max_tokens=4)
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(width=30, num_heads=4)
    with pytest.raises(ValueError, match="num_tokens"):
        Sampler(tiny_config())(None, None, jax.random.PRNGKey(0), 7)
