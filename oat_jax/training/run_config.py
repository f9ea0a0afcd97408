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
    """AdamW with warmup and a constant or cosine schedule (`optim.make_optimizer`)."""
    lr: float  # peak learning rate
    warmup_steps: int  # linear warmup updates
    schedule: str  # after warmup: 'constant' | 'cosine' (to lr * min_lr_ratio at the last step)
    min_lr_ratio: float
    b1: float
    b2: float
    weight_decay: float  # decoupled, on >= 2-D weights only
    clip_norm: float  # global gradient-norm clip (<= 0 disables)
    accum_steps: int = 1  # micro-batches per update (the tokenizer step only)


@dataclasses.dataclass(frozen=True)
class Ema:
    max_decay: float  # EMA decay = min(1 - n**-0.75, max_decay) after two updates


@dataclasses.dataclass(frozen=True)
class Train:
    batch_size: int  # global batch per update (all devices and processes)
    num_steps: int
    log_every: int
    eval_every: int
    eval_batch_size: int
    progress_bar: bool

    def __post_init__(self):
        _at_least(self, "config.train", num_steps=0, batch_size=1, log_every=1, eval_every=1, eval_batch_size=1)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    every: int
    keep_last: int
    keep_best: int
    async_save: bool

    def __post_init__(self):
        _at_least(self, "config.checkpoint", every=1, keep_last=1, keep_best=0)


@dataclasses.dataclass(frozen=True)
class Mesh:
    data: int  # devices on the data axis (-1 = all remaining)
    fsdp: int  # devices on the fsdp axis


@dataclasses.dataclass(frozen=True)
class Sharding:
    rules: tuple  # ((regex on the param path, 'replicate' | 'fsdp' | axes tuple), ...)
    fsdp_min_size: int  # leaves with fewer elements stay replicated under 'fsdp'


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where the episodes come from and how they split: one dataset (path, or name + data_dir; neither = the
    embedded one), train/val carved by episode."""
    path: str
    name: str
    source_split: str
    data_dir: str
    val_fraction: float
    split_seed: int
    max_eval_chunks: int


@dataclasses.dataclass(frozen=True)
class ChunkData(DataSource):
    """The tokenizer's data: the source, or a weighted mixture of datasets, read as action chunks."""
    mixture: str
    action_keys: str
    allow_embedded: bool
    in_memory: bool
    shuffle_buffer: int
    eval_datasets: str


@dataclasses.dataclass(frozen=True)
class PairData(DataSource):
    """The policies' data: (observation history, chunk) pairs of the source."""
    obs_keys: tuple
    image_keys: tuple
    n_obs_steps: int
    horizon: int = 0  # H of chunks made here (a fitted tokenizer, the Diffusion Policy); 0: the tokenizer's


@dataclasses.dataclass(frozen=True)
class Normalization:
    mode: str
    unnormalized_dims: str = ""  # comma-separated action dims left raw (the tokenizer's actions only)


@dataclasses.dataclass(frozen=True)
class Augment:
    flip_prob: float
    splice_prob: float
    min_length: int


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
    mesh: Mesh
    sharding: Sharding


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
    mesh: Mesh
    sharding: Sharding
    tokenizer: TokenizerSource | None = None
    sampling: SamplingConfig | None = None
    diffusion: Diffusion | None = None
    action_normalizer: Normalization | None = None


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


def tokenizer_run(config: ml_collections.ConfigDict) -> TokenizerRun:
    """The typed `TokenizerRun` of a tokenizer config (experiments/configs/oat.py)."""
    def model(fields):
        if "action_dim" in fields:
            raise ValueError("config.model.action_dim: the action dimension is the dataset's; remove the field.")
        try:
            return OATConfig.from_dict({**fields, "action_dim": 1})
        except (TypeError, ValueError) as e:
            raise ValueError(f"config.model: {e}") from e

    builders = {"seed": int, "data": ChunkData, "normalizer": Normalization, "model": model,
                "objective": lambda d: Objective.from_dict(d), "augment": Augment, "optim": Optim, "ema": Ema,
                "train": Train, "checkpoint": Checkpoint, "mesh": Mesh, "sharding": Sharding}
    return _sections(config, TokenizerRun, builders, ignored=("kind",))


def policy_run(config: ml_collections.ConfigDict) -> PolicyRun:
    """The typed `PolicyRun` of a policy config (experiments/configs/policy.py)."""
    builders = {"seed": int, "data": PairData, "obs_normalizer": Normalization, "model": PolicyModel,
                "policy": PolicyKind, "optim": Optim, "ema": Ema, "train": Train, "checkpoint": Checkpoint,
                "mesh": Mesh, "sharding": Sharding, "tokenizer": TokenizerSource, "sampling": SamplingConfig,
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
