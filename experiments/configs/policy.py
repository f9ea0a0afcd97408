r"""Autoregressive token policy configs (docs/POLICY.md), trained with the same entry point as the tokenizers:

  python -m experiments.train --config=experiments/configs/policy.py:oat \
      --config.tokenizer.path=runs/oat_metaworld --config.data.path=/path/to/rlds --workdir=runs/policy_oat

Variants (comma-separated, combinable with runlocal / test):
  :oat     OAT tokenizer (8 ordered tokens); give its training workdir or exported dir in config.tokenizer.path
  :oatx    OAT x (no nested dropout) tokenizer: same, config.tokenizer.path = the :oatx tokenizer run
  :quest   QueST-style tokenizer (causal conv encoder, no ordering): config.tokenizer.path = that tokenizer run
  :bin     per-dimension binning (256 bins, H * D_a tokens), fitted on the train chunks at start
           (or a saved Bin directory in config.tokenizer.path)
  :fast    FAST (DCT + BPE, variable length, EOS), fitted on the train chunks at start (or a saved FAST dir)
  :dp      the Diffusion Policy baseline: no tokenizer; the same model sizes as a transformer denoiser (DDIM, 100
           train / 10 sampling steps, cosine betas, epsilon prediction, clipped samples), actions in [-1, 1]
  :fsdp      shard params and optimizer state over all devices (FSDP)
  :runlocal  small model, a few hundred steps (minutes on a CPU)
  :test      tiny model, 4 steps (unit tests)
Every variant shares the model, data and training budget; only the tokenizer differs.
The dataset defaults to the embedded Meta-World MT10 dataset; the recipe uses the paper's four tasks
(experiments/recipes/metaworld_policy_comparison.sh). Observations: config.data.state_keys / image_keys /
language_key; --config.data.shuffle_buffer=10000 streams the pairs (large datasets, weighted mixtures
'name_or_path:weight,...' in config.data.path) instead of holding them in memory.
"""

import ml_collections

from experiments.configs import common

TOKENIZERS = ("oat", "oatx", "quest", "bin", "fast")
POLICY_TYPES = TOKENIZERS + ("dp",)  # one per comparison row
VARIANTS = POLICY_TYPES + ("fsdp", "runlocal", "test")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Policy training config for the variants in `arg` (see the module docstring)."""
    variants = common.parse_variants(arg, VARIANTS, exclusive=POLICY_TYPES)
    config = common.base()  # seed, data source and split, optim, ema, train, checkpoint
    config.kind = "policy"  # experiments.train dispatches on this: 'policy' trains a policy, else a tokenizer.

    diffusion = "dp" in variants
    if not diffusion:  # a token policy: its frozen tokenizer and how it samples tokens when acting
        config.tokenizer = ml_collections.ConfigDict()
        config.tokenizer.path = ""  # saved tokenizer dir or OAT/QueST training workdir (the oat/oatx/quest rows).
        if variants & {"bin", "fast"}:
            config.tokenizer.fit = "bin" if "bin" in variants else "fast"  # fitted on the train chunks at start.
            config.tokenizer.fit_options = ml_collections.ConfigDict()  # keyword options of the fit (num_bins).
            if "bin" in variants:
                config.tokenizer.fit_options.num_bins = 256
        config.sampling = ml_collections.ConfigDict()
        config.sampling.temperature = 1.0  # sampling temperature at evaluation (paper 1.0; 0 = greedy).
        config.sampling.top_k = 10  # top-k at evaluation (paper 10; 0 = off).

    config.data.state_keys = ("observation/state",)  # state fields, concatenated for the MLP encoder (() = none).
    config.data.image_keys = ()  # cameras for the conv encoder, e.g. ("observation/image",) (at least one of the two).
    config.data.language_key = ""  # instruction step key, e.g. "language_instruction" ('' = no language input).
    config.data.n_obs_steps = 2  # K: observation frames of history (the paper uses 2).
    config.data.crop_min_area = 1.0  # < 1: random crops of the training images down to this area fraction.
    config.data.max_eval_chunks = 4096  # evaluate on at most this many held-out pairs (evenly spaced).
    if diffusion or variants & {"bin", "fast"}:  # chunks made here (a loaded tokenizer brings its own H)
        config.data.horizon = 32  # H of the chunks the tokenizer is fitted on / the denoiser generates.

    config.obs_normalizer = ml_collections.ConfigDict()
    config.obs_normalizer.mode = "gaussian"  # state normalization fitted on train episodes: 'gaussian' | 'limits'.

    config.model = ml_collections.ConfigDict()
    config.model.width = 256  # E: transformer width (paper 256).
    config.model.depth = 4  # decoder blocks (paper 4).
    config.model.num_heads = 4  # attention heads (paper 4).
    config.model.mlp_ratio = 4.0  # MLP hidden = mlp_ratio * width.
    config.model.dropout = 0.1  # dropout after each sub-layer, the embeddings and the memory.
    config.model.state_hidden = 256  # hidden size of the state MLP encoder.
    config.model.dtype = "float32"  # matmul dtype: 'float32' | 'bfloat16'.

    config.policy = ml_collections.ConfigDict()
    config.policy.n_action_steps = 16  # actions of each chunk executed before re-planning (paper 16 of 32).
    config.policy.type = "diffusion" if diffusion else "token"  # 'token' (AR over tokens) | 'diffusion'.

    if diffusion:  # the Diffusion Policy baseline: its DDIM schedule and action normalizer
        config.diffusion = ml_collections.ConfigDict()
        config.diffusion.num_train_timesteps = 100  # T of the DDIM training schedule (reference DP 100).
        config.diffusion.num_inference_steps = 10  # DDIM steps when acting (reference DP 10).
        config.diffusion.prediction_type = "epsilon"  # network target: 'epsilon' | 'sample' | 'v_prediction'.
        config.diffusion.clip_sample = True  # clip the predicted clean chunk to [-1, 1] while sampling.
        config.diffusion.causal_attn = True  # causal self-attention over the chunk's steps (reference DP: True).
        config.diffusion.eval_sample_steps = 10  # DDIM steps of the held-out sampled-chunk MSE (0 = skip it).
        config.action_normalizer = ml_collections.ConfigDict()
        config.action_normalizer.mode = "limits"  # train-split actions mapped to [-1, 1] (reference DP).

    config.optim.update(lr=3e-4, warmup_steps=200, weight_decay=0.01)
    config.train.num_steps = 5000  # the same num_steps for every tokenizer compared
    config.checkpoint.every = 1000

    if "fsdp" in variants:
        common.fsdp(config)
    if "runlocal" in variants or "test" in variants:
        config.model.update(width=64, depth=2, num_heads=2, state_hidden=64)
        config.optim.update(warmup_steps=10, lr=1e-3)
        config.train.update(batch_size=32, num_steps=200, log_every=20, eval_every=100)
        config.checkpoint.update(every=100)
        config.data.max_eval_chunks = 256
        config.policy.n_action_steps = 4  # the tiny tokenizers of the oat.py runlocal/test configs have H = 8
    if "test" in variants:
        config.model.update(width=32, depth=1, num_heads=2, state_hidden=32, dropout=0.0)
        config.train.update(batch_size=16, num_steps=4, log_every=1, eval_every=4)
        config.checkpoint.every = 2
        config.data.max_eval_chunks = 64
        if "horizon" in config.data:
            config.data.horizon = 8  # the tiny tokenizers' H
        if diffusion:
            config.diffusion.eval_sample_steps = 2
    return config
