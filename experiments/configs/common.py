"""The fields every training config shares (tokenizer and policy runs), each defined here once: the seed, the data
source and its episode split, the optimizer, the EMA, the step loop, checkpoints, the device mesh and sharding
rules. A config file starts from `base()` and states only the values it changes and the fields of its own kind.
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
    config.data.path = ""  # RLDS builder directory; '' with name '' = the embedded Meta-World dataset.
    config.data.name = ""  # TFDS dataset name (with data_dir) instead of a path.
    config.data.source_split = "train"  # TFDS split holding the episodes (train/val are carved from it by episode).
    config.data.data_dir = ""  # TFDS data_dir for `name`.
    config.data.val_fraction = 0.1  # fraction of episodes held out for evaluation (seeded, by episode).
    config.data.split_seed = 0  # seed of the episode split (the same split for tokenizers and policies).
    config.data.max_eval_chunks = 4096  # evaluate on at most this many held-out chunks (evenly spaced).

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 2e-3  # peak learning rate.
    config.optim.warmup_steps = 100  # linear warmup updates.
    config.optim.schedule = "cosine"  # after warmup: 'constant' | 'cosine' (to lr * min_lr_ratio at num_steps).
    config.optim.min_lr_ratio = 0.05  # final lr / peak lr of the cosine.
    config.optim.b1 = 0.9  # AdamW beta1.
    config.optim.b2 = 0.95  # AdamW beta2.
    config.optim.weight_decay = 0.0  # AdamW decoupled weight decay (only on >= 2-D weights).
    config.optim.clip_norm = 1.0  # global gradient-norm clip (<= 0 disables).

    config.ema = ml_collections.ConfigDict()
    config.ema.max_decay = 0.999  # EMA decay = min(1 - n**-0.75, max_decay) after two updates (reference 0.9999
    #                               for 100k+ step runs).

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128  # global batch (all devices and processes together) per update.
    config.train.num_steps = 4000  # total updates.
    config.train.log_every = 50  # steps between training-metric logs (also the NaN check and, multi-process,
    #                              the stop-signal check).
    config.train.eval_every = 500  # steps between held-out evaluations (and a final one at the end).
    config.train.eval_batch_size = 512  # global batch of the evaluation.
    config.train.progress_bar = True  # tqdm bar with loss and steps/s on process 0.

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = 500  # steps between checkpoints (plus the final step and on SIGTERM/SIGINT).
    config.checkpoint.keep_last = 2  # most recent checkpoints kept.
    config.checkpoint.keep_best = 1  # checkpoints with the best held-out metric kept in addition.
    config.checkpoint.async_save = True  # write checkpoints in the background.

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # devices on the data axis (-1 = all remaining).
    config.mesh.fsdp = 1  # devices on the fsdp axis (params split over it when a rule says 'fsdp').

    config.sharding = ml_collections.ConfigDict()
    config.sharding.rules = ((".*", "replicate"),)  # (regex on the param path, 'replicate' | 'fsdp' | axes tuple).
    config.sharding.fsdp_min_size = 2 ** 12  # leaves with fewer elements stay replicated under 'fsdp'.
    return config
