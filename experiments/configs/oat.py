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
  --config=experiments/configs/oat.py:scale       one GPU/TPU: the paper's model size (width 256, 2 + 4 blocks, dropout
      0.1) with the default's design and objective, bf16 compute (fp32 params and optimizer state), batch 256,
      100k steps; add a dataset as for :paper (the embedded one works too). On N accelerators or hosts:
      --config.train.batch_size=$((256 * N)) (plus the multi-process flags below on several hosts)
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
from oat_jax.training.run_config import TokenizerModel
from oat_jax.training.tokenizer.objective import Objective

VARIANTS = ("oatx", "quest", "paper", "scale", "fsdp", "runlocal", "test")


def _model(**changes) -> ml_collections.ConfigDict:
    """`TokenizerModel` fields (see oat_jax/training/run_config.py for each one's meaning): the paper's model, with
    `changes`; action_dim is the dataset's."""
    return ml_collections.ConfigDict(dataclasses.asdict(TokenizerModel(**changes)))


def _objective(**changes) -> ml_collections.ConfigDict:
    """`Objective` fields (see oat_jax/training/tokenizer/objective.py for each one's meaning): the paper's, with
    `changes`."""
    return ml_collections.ConfigDict(dataclasses.asdict(Objective(**changes)))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Returns the training config for the variants named in `arg` (see the module docstring)."""
    variants = common.parse_variants(arg, VARIANTS, exclusive=("oatx", "quest"))
    if {"paper", "scale"} <= variants:
        raise ValueError("Choose one variant among ('paper', 'scale'): :scale is the paper's model with this "
                         "project's objective, :paper the reference recipe.")
    config = common.base()  # seed, data source and split, optim, ema, train, checkpoint
    # config.data.path may be a weighted mixture 'name_or_path:weight,...' (names read from data_dir; weight default
    # 1). Each member is normalized with its own statistics; the tokenizer keeps them all (OATTokenizer.for_dataset).
    # Fields under steps/action concatenated into the action (comma-separated, e.g. world_vector,rotation_delta,
    # gripper_closedness_action); '' = the registered layout of a known name (data_pipelines/oxe.py), else the
    # action is a (D_a,) vector.
    config.data.action_keys = ""
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
    config.model = _model(width=96, enc_depth=2, dec_depth=2, dropout=0.0, encoder="conv", dec_patch=4)

    # The training objective (oat_jax/training/tokenizer/objective.py). Default, beyond the paper: 90% of the rows
    # decoded at all N tokens, the other 10% each at every k < N weighted by P(k) ~ k^-1.5, a hinge on any k decoding
    # worse than 0.95x k - 1, and full-length decodes passing token 1 only 0.3 of their gradient (so the first token
    # is shaped by the short prefixes).
    config.objective = _objective(nested_dropout="power", power=-1.5, full=0.9, split=True, monotone_weight=0.1,
                                  detach_tokens=1)

    config.augment = ml_collections.ConfigDict()  # chunk augmentation (oat_jax/training/tokenizer/augment.py)
    config.augment.flip_prob = 0.5  # P(an example gets random per-dimension sign flips).
    config.augment.splice_prob = 0.5  # P(an example's tail, from a random cut, comes from another chunk).

    if "paper" in variants:
        config.data.path = ml_collections.config_dict.placeholder(str)  # None: set path, or name + data_dir.
        config.model = _model(dtype="bfloat16")  # the reference model
        config.objective = _objective()  # pow2, one sampled k per row
        config.augment.update(flip_prob=0.0, splice_prob=0.0)
        config.optim.update(lr=5e-5, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, clip_norm=1.0)
        config.ema.max_decay = 0.9999
        # 256 per GPU on 4 GPUs; ~5000 epochs of LIBERO-10 (~100k chunks) at batch 1024.
        config.train.update(batch_size=1024, num_steps=500_000, log_every=100, eval_every=5000)
        config.checkpoint.update(every=5000, keep_last=3)
    if "scale" in variants:  # one accelerator: the paper's size with the default's design, objective and augmentation
        config.model = _model(encoder="conv", dec_patch=4, dtype="bfloat16")
        config.optim.update(lr=1e-3, warmup_steps=1000)  # cosine to 5% of the peak
        config.ema.max_decay = 0.9999
        config.train.update(batch_size=256, num_steps=100_000, log_every=100, eval_every=2000)
        config.checkpoint.update(every=2000, keep_last=3)
    if "fsdp" in variants:
        common.fsdp(config, min_size=16 if "test" in variants else 2 ** 12)  # the tiny test model's leaves are small
    if "runlocal" in variants or "test" in variants:
        config.model = _model(width=32, num_heads=2, enc_depth=1, dec_depth=1, horizon=8, num_tokens=4,
                              levels=(4, 3, 3), dropout=0.0, encoder="conv")
        config.optim.update(warmup_steps=2, min_lr_ratio=1.0, lr=3e-3)
        config.train.update(batch_size=16, num_steps=20, log_every=5, eval_every=10)
        config.checkpoint.every = 10
    if "test" in variants:
        config.train.update(num_steps=4, log_every=1, eval_every=4)
        config.checkpoint.every = 2
    # Unordered tokens: no nested dropout, so every decode is full-length (nothing to split, hinge or detach).
    unordered = _objective(nested_dropout="none")
    if "oatx" in variants:  # the paper's register encoder (2-step input patches at the default's size) unordered
        config.model.update(encoder="registers", enc_patch=1 if "paper" in variants else 2)
        config.objective = unordered
    if "quest" in variants:  # QueST-style: the causal conv encoder on single steps, unordered tokens
        config.model.update(encoder="conv", enc_patch=1)
        config.objective = unordered
    return config
