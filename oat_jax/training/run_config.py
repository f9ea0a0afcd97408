"""The typed configuration the trainers read: frozen dataclasses built once from the command line's ConfigDict.

ml_collections stays at the edge (experiments/configs/*.py and --config.* overrides); `tokenizer_run(config)` and
`policy_run(config)` turn it into immutable typed objects, and everything below the trainers reads their attributes.
A field a section does not have, a missing one, or a section the run kind does not read is a ValueError naming
`config.<section>.<field>`. `to_json(run)` is what checkpoints store as the run's config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

from oat_jax.config import OATConfig
from oat_jax.policy.sampling import SamplingConfig
from oat_jax.training.tokenizer.objective import Objective


def _at_least(section: Any, where: str, **minimum: int) -> None:
    """ValueError naming the first field of `section` below its minimum (or not a whole number)."""
    for name, low in minimum.items():
        value = getattr(section, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{where}.{name} must be a whole number >= {low}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Optim:
    """AdamW (betas 0.9, 0.95) with warmup and a cosine schedule (`optim.make_optimizer`)."""
    lr: float  # peak learning rate
    warmup_steps: int  # linear warmup updates
    min_lr_ratio: float  # the cosine ends at lr * min_lr_ratio at the last step (1: constant)
    weight_decay: float  # decoupled, on >= 2-D weights only
    clip_norm: float  # global gradient-norm clip (<= 0 disables)


@dataclasses.dataclass(frozen=True)
class Ema:
    max_decay: float  # EMA decay = min(1 - n**-0.75, max_decay) after two updates


@dataclasses.dataclass(frozen=True)
class Train:
    batch_size: int  # global batch per update (all devices and processes) and of the held-out evaluation
    num_steps: int
    log_every: int
    eval_every: int

    def __post_init__(self):
        _at_least(self, "config.train", num_steps=0, batch_size=1, log_every=1, eval_every=1)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    every: int
    keep_last: int

    def __post_init__(self):
        _at_least(self, "config.checkpoint", every=1, keep_last=1)


@dataclasses.dataclass(frozen=True)
class Sharding:
    """The ('data', 'fsdp') device mesh and how params and optimizer state are placed on it (`sharding.py`). The
    default (no `config.sharding` section): data parallelism over every device, params replicated."""
    fsdp: int = 1  # devices on the fsdp axis, the rest on the data axis (1 = data parallel, -1 = all devices)
    rules: tuple = ((".*", "replicate"),)  # ((regex on the param path, 'replicate' | 'fsdp' | axes tuple), ...)
    fsdp_min_size: int = 2 ** 12  # leaves with fewer elements stay replicated under 'fsdp'


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the episodes come from and how they split: one dataset (path, or name + data_dir; neither = the
    embedded one), train/val carved by episode."""
    path: str | None  # None (a config that needs a dataset, :paper) without a name is an error asking for one
    name: str
    source_split: str
    data_dir: str
    val_fraction: float
    split_seed: int
    shuffle_buffer: int  # 0: the train set in host memory; > 0: tf.data streaming through a buffer of that many


@dataclasses.dataclass(frozen=True)
class ChunkData(DataSource):
    """The tokenizer's data: the source (`path` may be a weighted mixture of datasets), read as action chunks."""
    action_keys: str
    eval_datasets: str


@dataclasses.dataclass(frozen=True)
class PairData(DataSource):
    """The policies' data: (observation history, chunk) pairs of the source."""
    max_eval_chunks: int  # held-out pairs evaluated (evenly spaced)
    state_keys: tuple  # state fields, concatenated (zero or more)
    image_keys: tuple  # cameras (zero or more)
    language_key: str  # the instruction's step key ('' = no language input)
    crop_min_area: float  # random crop of the training images to an area fraction in [crop_min_area, 1] (1 = off)
    n_obs_steps: int
    horizon: int = 0  # H of chunks made here (a fitted tokenizer, the Diffusion Policy); 0: the tokenizer's


@dataclasses.dataclass(frozen=True)
class Normalization:
    mode: str
    unnormalized_dims: str = ""  # comma-separated action dims left raw (the tokenizer's actions only)


@dataclasses.dataclass(frozen=True)
class Augment:
    """Chunk augmentation of the full-length decodes (`tokenizer/augment.py`)."""
    flip_prob: float
    splice_prob: float


@dataclasses.dataclass(frozen=True)
class TokenizerSource:
    """Where a token policy's frozen tokenizer comes from: a saved directory / run, or a fit at start."""
    path: str
    fit: str = ""  # 'bin' | 'fast'
    fit_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PolicyModel:
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    dropout: float
    state_hidden: int
    dtype: str


@dataclasses.dataclass(frozen=True)
class PolicyKind:
    n_action_steps: int  # actions of each chunk executed before re-planning
    type: str  # 'token' | 'diffusion'


@dataclasses.dataclass(frozen=True)
class Diffusion:
    num_train_timesteps: int
    num_inference_steps: int
    prediction_type: str
    clip_sample: bool
    causal_attn: bool
    eval_sample_steps: int


@dataclasses.dataclass(frozen=True)
class TokenizerModel:
    """The tokenizer architecture a config tunes (`config.model`); the paper's values by default. Encoder and
    decoder share the width, the heads and the dropout (the paper's model does); the decoder's feed-forward hidden
    size is 4 x width (the paper's 1024 at width 256); every other OATConfig field keeps the reference's value."""
    horizon: int = 32  # H: action steps per chunk
    num_tokens: int = 8  # N: tokens per chunk
    levels: tuple = (8, 5, 5, 5)  # FSQ levels per latent channel (vocabulary = their product)
    encoder: str = "registers"  # 'registers' (the paper's) | 'conv' (causal temporal-conv downsampling)
    width: int = 256  # E of encoder and decoder
    num_heads: int = 4  # attention heads of encoder and decoder
    dropout: float = 0.1  # every dropout of encoder and decoder (attention probabilities included)
    enc_depth: int = 2  # encoder blocks
    dec_depth: int = 4  # decoder blocks
    enc_patch: int = 1  # action steps per encoder input token
    dec_patch: int = 1  # action steps each decoder query outputs
    dtype: str = "float32"  # matmul dtype: 'float32' | 'bfloat16'

    def oat_config(self, action_dim: int) -> OATConfig:
        """The model's OATConfig for `action_dim`-D actions (ValueError naming the field that is out of range)."""
        return OATConfig(
            action_dim=action_dim, horizon=self.horizon, num_tokens=self.num_tokens, levels=tuple(self.levels),
            encoder=self.encoder, enc_width=self.width, enc_depth=self.enc_depth, enc_heads=self.num_heads,
            enc_dropout=self.dropout, enc_patch=self.enc_patch, dec_width=self.width, dec_depth=self.dec_depth,
            dec_heads=self.num_heads, dec_ffn_dim=4 * self.width, dec_dropout=self.dropout,
            dec_attn_dropout=self.dropout, dec_patch=self.dec_patch, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class TokenizerRun:
    """Everything a tokenizer run reads. `model` holds action_dim 1 until the dataset gives the real one."""
    seed: int
    data: ChunkData
    normalizer: Normalization
    model: OATConfig
    objective: Objective
    augment: Augment
    optim: Optim
    ema: Ema
    train: Train
    checkpoint: Checkpoint
    sharding: Sharding = dataclasses.field(default_factory=Sharding)


@dataclasses.dataclass(frozen=True)
class PolicyRun:
    """Everything a policy run reads: a token policy has `tokenizer` and `sampling`, the Diffusion Policy
    `diffusion` and `action_normalizer`."""
    seed: int
    data: PairData
    obs_normalizer: Normalization
    model: PolicyModel
    policy: PolicyKind
    optim: Optim
    ema: Ema
    train: Train
    checkpoint: Checkpoint
    sharding: Sharding = dataclasses.field(default_factory=Sharding)
    tokenizer: TokenizerSource | None = None
    sampling: SamplingConfig | None = None
    diffusion: Diffusion | None = None
    action_normalizer: Normalization | None = None


# Fields removed from the training configs on 2026-12-05, and what a command line sets instead.
REMOVED_FIELDS = {
    "model.enc_width": "set model.width (encoder and decoder share it)",
    "model.dec_width": "set model.width (encoder and decoder share it)",
    "model.enc_heads": "set model.num_heads", "model.dec_heads": "set model.num_heads",
    "model.enc_dropout": "set model.dropout", "model.dec_dropout": "set model.dropout",
    "model.dec_attn_dropout": "set model.dropout",
    "model.dec_ffn_dim": "set model.width (the feed-forward size is 4 x width)",
    "optim.schedule": "set optim.min_lr_ratio (1.0 = a constant lr after the warmup)",
    "optim.b1": "AdamW betas are 0.9, 0.95", "optim.b2": "AdamW betas are 0.9, 0.95",
    "optim.accum_steps": "no gradient accumulation: lower train.batch_size or shard with :fsdp",
    "train.eval_batch_size": "set train.batch_size (the evaluation uses the training batch)",
    "train.progress_bar": "the bar shows on a terminal, the log elsewhere",
    "checkpoint.async_save": "checkpoints are written in the background",
    "checkpoint.keep_best": "the best checkpoint is kept beside checkpoint.keep_last",
    "mesh.data": "set sharding.fsdp (the data axis takes the other devices)",
    "data.obs_keys": "set data.state_keys (zero or more state fields, concatenated) and data.image_keys (cameras)",
    "mesh.fsdp": "set sharding.fsdp (the :fsdp variant adds the section)",
    "data.mixture": "set data.path (a mixture 'name_or_path:weight,...')",
    "data.in_memory": "set data.shuffle_buffer (0 = in memory, > 0 = streaming)",
    "data.allow_embedded": "the :paper variant leaves data.path unset",
    "augment.min_length": "only full-length decodes are augmented",
    "objective.monotone_margin": "the hinge's margin is 0.05",
    "objective.detach_scale": "the detached codes keep 0.3 of the gradient",
}


def removed_field_errors(argv: list[str]) -> list[str]:
    """One message per `--config.<field>=...` argument naming a removed field and what replaces it."""
    out = []
    for arg in argv:
        name = arg[len("--config."):].split("=", 1)[0] if arg.startswith("--config.") else ""
        if name in REMOVED_FIELDS:
            out.append(f"--config.{name} no longer exists: {REMOVED_FIELDS[name]}.")
    return out


def _plain(value: Any) -> Any:
    """ConfigDict -> dict (recursively); lists -> tuples (frozen dataclasses hold tuples)."""
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def _build(cls, values: Mapping[str, Any], where: str):
    """`cls(**values)`; ValueError naming `where` for an unknown or a missing field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {[f'{where}.{k}' for k in unknown]}; the fields are "
                         f"{sorted(fields)}.")
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing field(s) {[f'{where}.{k}' for k in missing]}.")
    return cls(**values)


def _sections(config: ml_collections.ConfigDict, run_cls, builders: Mapping[str, Any], ignored=()) -> Any:
    values = _plain(config)
    out = {}
    for key, value in values.items():
        if key in ignored:
            continue
        if key not in builders:
            raise ValueError(f"config.{key}: a {run_cls.__name__} does not read this section; remove it.")
        build = builders[key]
        out[key] = _build(build, value, f"config.{key}") if dataclasses.is_dataclass(build) else build(value)
    return _build(run_cls, out, "config")


def oat_config(model: Mapping[str, Any], action_dim: int) -> OATConfig:
    """The OATConfig of a tokenizer config's `config.model` section (`TokenizerModel` fields) for `action_dim`-D
    actions; ValueError naming an unknown, missing or out-of-range field."""
    fields = _plain(model)
    if "action_dim" in fields:
        raise ValueError("config.model.action_dim: the action dimension is the dataset's; remove the field.")
    try:
        return _build(TokenizerModel, fields, "config.model").oat_config(action_dim)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e) if str(e).startswith("config.model") else f"config.model: {e}") from e


def tokenizer_run(config: ml_collections.ConfigDict) -> TokenizerRun:
    """The typed `TokenizerRun` of a tokenizer config (experiments/configs/oat.py)."""
    builders = {"seed": int, "data": ChunkData, "normalizer": Normalization, "model": lambda d: oat_config(d, 1),
                "objective": lambda d: Objective.from_dict(d), "augment": Augment, "optim": Optim, "ema": Ema,
                "train": Train, "checkpoint": Checkpoint, "sharding": Sharding}
    return _sections(config, TokenizerRun, builders, ignored=("kind",))


def policy_run(config: ml_collections.ConfigDict) -> PolicyRun:
    """The typed `PolicyRun` of a policy config (experiments/configs/policy.py)."""
    builders = {"seed": int, "data": PairData, "obs_normalizer": Normalization, "model": PolicyModel,
                "policy": PolicyKind, "optim": Optim, "ema": Ema, "train": Train, "checkpoint": Checkpoint,
                "sharding": Sharding, "tokenizer": TokenizerSource, "sampling": SamplingConfig,
                "diffusion": Diffusion, "action_normalizer": Normalization}
    run = _sections(config, PolicyRun, builders, ignored=("kind",))
    token = run.policy.type == "token"
    inert = ("diffusion", "action_normalizer") if token else ("tokenizer", "sampling")
    for name in inert:
        if getattr(run, name) is not None:
            raise ValueError(f"config.{name}: a policy of config.policy.type={run.policy.type!r} does not read this "
                             f"section; remove it.")
    if token and (run.tokenizer is None or run.sampling is None):
        raise ValueError("config.policy.type='token' needs config.tokenizer and config.sampling (policy.py:oat, ...).")
    if not token and (run.diffusion is None or run.action_normalizer is None):
        raise ValueError(f"config.policy.type={run.policy.type!r} needs config.diffusion and "
                         f"config.action_normalizer (policy.py:dp).")
    return run


def to_json(run: TokenizerRun | PolicyRun) -> dict:
    """The run's configuration as plain JSON (what checkpoints store and a resumed run compares against)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    out = plain(run)
    if isinstance(run, TokenizerRun):  # the placeholder: the action dimension is the dataset's, not the config's
        del out["model"]["action_dim"]
    return out
