"""The fields every training config shares (tokenizer and policy runs), each defined here once: the seed, the data
source and its episode split, the optimizer, the EMA, the step loop and checkpoints; `fsdp` adds the device mesh
and sharding rules of fully sharded training. A config file starts from `base()` and states only the values it
changes and the fields of its own kind.
"""

import ml_collections


def parse_variants(arg: str, variants: tuple[str, ...], exclusive: tuple[str, ...] = ()) -> set[str]:
    """The comma-separated variant keywords of a config argument; ValueError for an unknown one, or for more than
    one of `exclusive`."""
    chosen = {a.strip() for a in (arg or "").split(",") if a.strip()}
    unknown = sorted(chosen - set(variants))
    if unknown:
        raise ValueError(f"Unknown config variant(s) {unknown}; choose from {variants} (comma-separated).")
    if len(chosen & set(exclusive)) > 1:
        raise ValueError(f"Choose one variant among {exclusive}, got {sorted(chosen & set(exclusive))}.")
    return chosen


def base() -> ml_collections.ConfigDict:
    """The shared fields with their common defaults."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # PRNG seed of param init, dropout and data order.

    config.data = ml_collections.ConfigDict()
    config.data.path = ""  # RLDS builder directory ('' with name '' = the embedded Meta-World dataset); a tokenizer
    #                        also takes a weighted mixture 'name_or_path:weight,...' (experiments/configs/oat.py).
    config.data.name = ""  # TFDS dataset name (with data_dir) instead of a path.
    config.data.source_split = "train"  # TFDS split holding the episodes (train/val are carved from it by episode).
    config.data.data_dir = ""  # TFDS data_dir for `name`.
    config.data.val_fraction = 0.1  # fraction of episodes held out for evaluation (seeded, by episode).
    config.data.split_seed = 0  # seed of the episode split (the same split for tokenizers and policies).
    # 0: the train chunks (or policy pairs) are loaded into host memory, and a resumed run replays exactly the batches
    # of an uninterrupted one; > 0: they stream through tf.data with a shuffle buffer of that many (e.g. 100_000),
    # for datasets larger than host memory (a resumed policy run continues exactly; a tokenizer run re-seeds).
    config.data.shuffle_buffer = 0

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 2e-3  # peak learning rate.
    config.optim.warmup_steps = 100  # linear warmup updates.
    config.optim.min_lr_ratio = 0.05  # after warmup a cosine from lr to lr * min_lr_ratio at num_steps (1 = constant).
    config.optim.weight_decay = 0.0  # AdamW (betas 0.9, 0.95) decoupled weight decay (only on >= 2-D weights).
    config.optim.clip_norm = 1.0  # global gradient-norm clip (<= 0 disables).

    config.ema = ml_collections.ConfigDict()
    config.ema.max_decay = 0.999  # EMA decay = min(1 - n**-0.75, max_decay) after two updates (reference 0.9999
    #                               for 100k+ step runs).

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128  # global batch (all devices and processes together) per update and evaluation.
    config.train.num_steps = 4000  # total updates.
    config.train.log_every = 50  # steps between training-metric logs (also the NaN check and, multi-process,
    #                              the stop-signal check).
    config.train.eval_every = 500  # steps between held-out evaluations (and a final one at the end).

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = 500  # steps between checkpoints (plus the final step and on SIGTERM/SIGINT).
    config.checkpoint.keep_last = 2  # most recent checkpoints kept (and the one with the best held-out metric).

    # Without a `sharding` section a run is data parallel over every device with replicated params; `fsdp(config)`
    # adds one.
    return config


def fsdp(config: ml_collections.ConfigDict, min_size: int = 2 ** 12) -> None:
    """Adds the `sharding` section that splits params and optimizer state over every device (FSDP)."""
    config.sharding = ml_collections.ConfigDict()
    config.sharding.fsdp = -1  # devices on the fsdp axis, the rest on the data axis (-1 = all devices).
    config.sharding.rules = ((".*", "fsdp"),)  # (regex on the param path, 'replicate' | 'fsdp' | axes tuple).
    config.sharding.fsdp_min_size = min_size  # leaves with fewer elements stay replicated under 'fsdp'.
