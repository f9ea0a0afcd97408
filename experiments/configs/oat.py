r"""OAT tokenizer training configs.

Default (embedded Meta-World dataset, a small fast model; about 5 minutes on 2 idle CPU cores): ordered tokens over a
causal conv encoder on single steps (token j summarizes steps 1..4(j + 1)), trained with nested dropout:
  python -m experiments.train --config=experiments/configs/oat.py --workdir=runs/oat_metaworld

Variants are chosen by the config argument (comma-separated keywords, combinable):
  --config=experiments/configs/oat.py:oatx        OAT x ablation: the paper's register encoder (model.encoder=
      'registers', 2-step input patches) without nested dropout (prefixes are not meaningful)
  --config=experiments/configs/oat.py:quest       QueST-style baseline: the default's conv encoder, no nested dropout
      (unordered tokens); same budget as the default
The paper's register encoder with the default's objective (the default before ordered conv; its policies succeed less
often on Meta-World tasks no run was tuned on, its k = 1 decodes 2.2x better, docs/POLICY.md):
  --config.model.encoder=registers --config.model.enc_patch=2
  --config=experiments/configs/oat.py:paper       the paper's model and reference hyperparameters (batch 256 per
      GPU x 4, lr 5e-5 constant, betas (0.9, 0.95), clip 1.0, EMA, bf16, pow2 nested dropout); it needs a dataset:
      add --config.data.path=/path/to/rlds_builder_dir, or --config.data.name=libero_10 --config.data.data_dir=DIR
  --config=experiments/configs/oat.py:paper,oatx  the paper's OAT x
  --config=experiments/configs/oat.py:fsdp        shard params and optimizer state over all devices (FSDP)
  --config=experiments/configs/oat.py:runlocal    tiny model, a few steps (smoke test, seconds)
  --config=experiments/configs/oat.py:test        tiny model used by the unit tests
Any field can be overridden, e.g. --config.optim.lr=1e-4 --config.train.num_steps=2000.
Several processes (e.g. two CPU hosts): add --coordinator_address=host0:1234 --num_processes=2 --process_id=<i> on
each (experiments/train.py; --distributed_auto on a TPU pod or SLURM job).
"""

import dataclasses

import ml_collections

from experiments.configs import common
from oat_jax.training.tokenizer.objective import Objective

VARIANTS = ("oatx", "quest", "paper", "fsdp", "runlocal", "test")


def _model(**overrides) -> ml_collections.ConfigDict:
    """The OATConfig fields people tune (see oat_jax/config.py for each one's meaning), the paper's values with
    `overrides`; the others keep OATConfig's (the reference's) values and action_dim is the dataset's."""
    model = ml_collections.ConfigDict(dict(
        horizon=32, num_tokens=8, levels=(8, 5, 5, 5),
        encoder="registers", enc_width=256, enc_depth=2, enc_heads=4, enc_dropout=0.1, enc_patch=1,
        dec_width=256, dec_depth=4, dec_heads=4, dec_ffn_dim=1024, dec_dropout=0.1, dec_attn_dropout=0.1,
        dec_patch=1, dtype="float32"))
    model.update(overrides)
    return model


def _objective(**changes) -> ml_collections.ConfigDict:
    """`Objective` fields (see oat_jax/training/tokenizer/objective.py for each one's meaning): the paper's, with
    `changes`."""
    return ml_collections.ConfigDict(dataclasses.asdict(Objective(**changes)))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the training config for the variants named in `arg` (see the module docstring)."""
    variants = common.parse_variants(arg, VARIANTS, exclusive=("oatx", "quest"))
    config = common.base()  # seed, data source and split, optim, ema, train, checkpoint, mesh, sharding
    # Weighted mixture instead of path/name: 'name_or_path:weight,...' (names read from data_dir; weight default 1).
    # Each member is normalized with its own statistics; the tokenizer keeps them all (OATTokenizer.for_dataset).
    config.data.mixture = ""
    # Fields under steps/action concatenated into the action (comma-separated, e.g. world_vector,rotation_delta,
    # gripper_closedness_action); '' = the registered layout of a known name (data_pipelines/oxe.py), else the
    # action is a (D_a,) vector.
    config.data.action_keys = ""
    config.data.allow_embedded = True  # path and name both '' = the embedded dataset (False: an error asks for one).
    config.data.in_memory = True  # load every chunk into host memory (exact resume); False streams with tf.data.
    config.data.shuffle_buffer = 100_000  # tf.data shuffle buffer when streaming (in_memory=False).
    # Extra held-out datasets evaluated on all episodes (e.g. unseen tasks): comma-separated 'label=DIR', 'DIR' or an
    # embedded name ('metaworld_heldout'); 'auto' = metaworld_heldout when training on the embedded data, else none.
    config.data.eval_datasets = "auto"

    config.normalizer = ml_collections.ConfigDict()
    config.normalizer.mode = "limits"  # 'limits' (paper) | 'quantile' | 'gaussian' (octo: 'bounds' | 'normal');
    #                                     fitted on train episodes only.
    config.normalizer.unnormalized_dims = ""  # comma-separated action dims left raw (e.g. a gripper in [0, 1]).

    # Default: a smaller, faster tokenizer than the paper's (width 96, 2 + 2 layers, no dropout) that learns the small
    # Meta-World dataset within a few minutes on a CPU, with 4-step output patches (docs/TOKENIZER_FIDELITY.md); its
    # encoder is the causal conv encoder on single steps instead of the paper's registers, so the first tokens
    # describe the start of the chunk, which a policy executes (docs/POLICY.md).
    config.model = _model(enc_width=96, enc_depth=2, enc_heads=4, enc_dropout=0.0, dec_width=96, dec_depth=2,
                          dec_heads=4, dec_ffn_dim=384, dec_dropout=0.0, dec_attn_dropout=0.0, encoder="conv",
                          enc_patch=1, dec_patch=4)

    # The training objective (oat_jax/training/tokenizer/objective.py). Default, beyond the paper: 90% of the rows
    # decoded at all N tokens, the other 10% each at every k < N weighted by P(k) ~ k^-1.5, a hinge on any k decoding
    # worse than k - 1, and full-length decodes passing token 1 only 0.3 of their gradient (so the first token is
    # shaped by the short prefixes).
    config.objective = _objective(nested_dropout="power", power=-1.5, full=0.9, split=True, monotone_weight=0.1,
                                  monotone_margin=0.05, detach_tokens=1, detach_scale=0.3)

    config.augment = ml_collections.ConfigDict()  # chunk augmentation (oat_jax/training/tokenizer/augment.py)
    config.augment.flip_prob = 0.5  # P(an example gets random per-dimension sign flips).
    config.augment.splice_prob = 0.5  # P(an example's tail, from a random cut, comes from another chunk).
    config.augment.min_length = -1  # only examples decoded at >= this many tokens are augmented (1 = all, -1 = N).

    config.optim.accum_steps = 1  # micro-batches per update (gradient accumulation); must divide the batch.

    if "paper" in variants:
        config.data.allow_embedded = False  # the paper recipe needs a dataset: set path, or name + data_dir.
        config.model = _model(dtype="bfloat16")  # the reference model
        config.objective = _objective()  # pow2, one sampled k per row
        config.augment.update(flip_prob=0.0, splice_prob=0.0, min_length=1)
        config.optim.update(lr=5e-5, warmup_steps=0, schedule="constant", min_lr_ratio=1.0, b1=0.9, b2=0.95,
                            weight_decay=0.0, clip_norm=1.0)
        config.ema.max_decay = 0.9999
        # 256 per GPU on 4 GPUs; ~5000 epochs of LIBERO-10 (~100k chunks) at batch 1024.
        config.train.update(batch_size=1024, num_steps=500_000, log_every=100, eval_every=5000,
                            eval_batch_size=1024)
        config.checkpoint.update(every=5000, keep_last=3, keep_best=2)
        config.data.max_eval_chunks = 32768
    if "fsdp" in variants:
        config.mesh.update(data=1, fsdp=-1)
        config.sharding.rules = ((".*", "fsdp"),)
    if "runlocal" in variants or "test" in variants:
        config.model = _model(enc_width=32, enc_depth=1, enc_heads=2, dec_width=32, dec_depth=1, dec_heads=2,
                              dec_ffn_dim=64, horizon=8, num_tokens=4, levels=(4, 3, 3), enc_dropout=0.0,
                              dec_dropout=0.0, dec_attn_dropout=0.0, encoder="conv")
        config.optim.update(warmup_steps=2, schedule="constant", lr=3e-3)
        config.train.update(batch_size=16, num_steps=20, log_every=5, eval_every=10, eval_batch_size=32,
                            progress_bar="runlocal" in variants)
        config.checkpoint.update(every=10, async_save=True)
        config.data.max_eval_chunks = 96
    if "test" in variants:
        config.train.update(num_steps=4, log_every=1, eval_every=4)
        config.checkpoint.every = 2
        config.sharding.fsdp_min_size = 16
    # Unordered tokens: no nested dropout, so every decode is full-length (nothing to split, hinge or detach).
    unordered = _objective(nested_dropout="none")
    if "oatx" in variants:  # the paper's register encoder (2-step input patches at the default's size) unordered
        config.model.update(encoder="registers", enc_patch=1 if "paper" in variants else 2)
        config.objective = unordered
    if "quest" in variants:  # QueST-style: the causal conv encoder on single steps, unordered tokens
        config.model.update(encoder="conv", enc_patch=1)
        config.objective = unordered
    return config
