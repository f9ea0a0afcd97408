"""`load_pretrained`: an OAT tokenizer for a user's own JAX code, from an exported tokenizer or a training run.

Accepted locations: local paths or anything `etils.epath` / Orbax open, e.g. `gs://bucket/run` (oat_jax imports no
TensorFlow; note that epath itself serves gs:// through tf.io.gfile when TensorFlow is installed, and through
fsspec + gcsfs otherwise or with EPATH_USE_TF=false):
- an exported tokenizer directory (`config.json`, `normalizer.json`, `params/`, see `oat_jax.checkpoint`);
- a training workdir: `<workdir>/tokenizer/` (the final EMA tokenizer) or a checkpoint in
  `<workdir>/checkpoints/<step>/{params, config, dataset_stats, ...}` whose `params` item holds
  {"params": raw, "ema_params": EMA}. Checkpoints are read with Orbax directly (the training code is not imported):
  the EMA params, the model fields of the run's config JSON (`model`, with action_dim -1 meaning "the dataset's")
  and the normalizer fitted from the `dataset_stats` JSON in the config's `normalizer.mode`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath

from oat_jax import checkpoint, integrity
from oat_jax.config import OATConfig
from oat_jax.model import abstract_params, check_params
from oat_jax.normalizer import ActionNormalizer
from oat_jax.tokenizer import OATTokenizer

CHECKPOINTS_DIR = "checkpoints"  # <workdir>/checkpoints/<step>/ (Orbax CheckpointManager of the training loop)
CHECKPOINT_ITEMS = ("params", "train_state", "config", "dataset_stats")
METRICS_FILE = "metrics.jsonl"  # <workdir>/metrics.jsonl: one {"step": s, "eval/val_mse": ..., ...} per line
BEST_METRIC = "val_mse"  # lower is better; "eval/val_mse" in metrics.jsonl

Step = int | str | None
ShardingLike = Any  # None, a jax.sharding.Sharding for every leaf, or a pytree of Shardings shaped like the params


class Pretrained(NamedTuple):
    """What `load_pretrained` returns.

    tokenizer: the `OATTokenizer` (config, params, normalizer; validated Python API).
    params: the float32 param tree as a plain nested dict of jax.Arrays (placed with the requested sharding).
    tokenize_fn: pure `tokenize_fn(params, actions (B, H, D_a) f32 raw units) -> (B, N) int32`, jit-able.
    detokenize_fn: pure `detokenize_fn(params, tokens (B, N) int, lengths None | int | (B,) int in 1..N)
      -> (B, H, D_a) f32 raw units`, jit-able.
    """

    tokenizer: OATTokenizer
    params: dict
    tokenize_fn: Callable[..., jax.Array]
    detokenize_fn: Callable[..., jax.Array]


def _path(path) -> epath.Path:
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


def _read_json(path: epath.Path) -> Any:
    return json.loads(path.read_text())


def _is_tokenizer_dir(path: epath.Path) -> bool:
    return all((path / name).exists()
               for name in (checkpoint.CONFIG_FILE, checkpoint.NORMALIZER_FILE, checkpoint.PARAMS_DIR))


def _targets(config: OATConfig, sharding: ShardingLike):
    """abstract_params(config) as ShapeDtypeStructs carrying the requested shardings."""
    abstract = abstract_params(config)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)
    try:
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, sharding)
    except (ValueError, TypeError) as e:
        raise ValueError(f"sharding must be None, one jax.sharding.Sharding for every param, or a pytree of "
                         f"Shardings with the param tree's structure; got {type(sharding).__name__}: {e}") from e


def _restore_params(directory: epath.Path, config: OATConfig, sharding: ShardingLike, key: str | None = None):
    """Restores the param tree saved at `directory` (or its entry `key`, e.g. "ema_params") with Orbax."""
    target = _targets(config, sharding)
    item = target if key is None else {key: target}
    with ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.metadata(directory).item_metadata
        saved = getattr(saved, "tree", saved)
        if key is not None:
            if key not in saved:
                raise ValueError(f"{directory} holds no {key!r} entry (it has {sorted(saved)}); is it a training "
                                 f"checkpoint's params item?")
            saved = saved[key]
        check_params(config, saved, source=f"the params saved in {directory}")
        restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=key is not None))
    return restored if key is None else restored[key]


def _verify(path: epath.Path, what: str) -> None:
    """Checks a local directory against its integrity manifest (`oat_jax.integrity`; remote paths are not hashed)."""
    if "://" not in str(path):
        integrity.verify(str(path), what)


def _load_tokenizer_dir(path: epath.Path, sharding: ShardingLike) -> OATTokenizer:
    _verify(path, "tokenizer")
    config = OATConfig.from_dict(_read_json(path / checkpoint.CONFIG_FILE))
    normalizer = ActionNormalizer.from_dict(_read_json(path / checkpoint.NORMALIZER_FILE))
    per_dataset = path / checkpoint.DATASET_NORMALIZERS_FILE
    dataset_normalizers = (checkpoint.dataset_normalizers_from_dict(_read_json(per_dataset))
                           if per_dataset.exists() else None)
    return OATTokenizer(config, _restore_params(path / checkpoint.PARAMS_DIR, config, sharding), normalizer,
                        dataset_normalizers)


def _checkpoint_manager(workdir: epath.Path) -> ocp.CheckpointManager:
    directory = workdir / CHECKPOINTS_DIR
    if not directory.exists():
        raise FileNotFoundError(f"{workdir} holds neither a tokenizer ({checkpoint.CONFIG_FILE}, "
                                f"{checkpoint.NORMALIZER_FILE}, {checkpoint.PARAMS_DIR}/ here or in "
                                f"{checkpoint.WORKDIR_SUBDIR}/) nor training checkpoints ({CHECKPOINTS_DIR}/).")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(directory, options=options, item_names=CHECKPOINT_ITEMS)


def _logged_metric(workdir: epath.Path) -> dict[int, float]:
    """step -> eval/val_mse from `<workdir>/metrics.jsonl` (the last record of a step wins)."""
    path = workdir / METRICS_FILE
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        value = record.get(f"eval/{BEST_METRIC}")
        if value is not None:
            values[int(record["step"])] = float(value)
    return values


def _choose_step(manager: ocp.CheckpointManager, workdir: epath.Path, step: Step) -> int:
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"No complete checkpoint in {workdir / CHECKPOINTS_DIR}; train first.")
    if step == "latest":
        return steps[-1]
    if step == "best":
        logged = _logged_metric(workdir)
        scores = {}
        for s in steps:
            value = (manager.metrics(s) or {}).get(BEST_METRIC, logged.get(s))
            if value is not None:
                scores[s] = float(value)
        if not scores:
            raise ValueError(f"No validation metric ({BEST_METRIC}) is recorded for the checkpoints {steps} of "
                             f"{workdir}; pass step='latest' or one of these step numbers.")
        return min(scores, key=lambda s: (scores[s], -s))
    if isinstance(step, bool) or not (isinstance(step, int) or (isinstance(step, str) and step.isdigit())):
        raise ValueError(f"step must be None, 'latest', 'best' or a step number, got {step!r}.")
    if int(step) not in steps:
        raise FileNotFoundError(f"No checkpoint of step {int(step)} in {workdir / CHECKPOINTS_DIR}; kept steps: "
                                f"{steps}.")
    return int(step)


def resolve_step(workdir, step: Step = "latest") -> int:
    """The checkpoint step of training workdir `workdir` that `step` names.

    Args:
      step: 'latest', 'best' (lowest validation MSE: the checkpoint's Orbax metrics, else the `eval/val_mse`
        logged in `<workdir>/metrics.jsonl`), or an int.
    Raises:
      FileNotFoundError: no checkpoints, or the requested step is not on disk.
      ValueError: `step` is not understood, or 'best' with no validation metric for any kept checkpoint.
    """
    workdir = _path(workdir)
    manager = _checkpoint_manager(workdir)
    try:
        return _choose_step(manager, workdir, step)
    finally:
        manager.close()


def config_from_run(model_fields: dict, action_dim: int, source: str = "the run config") -> OATConfig:
    """OATConfig from a training run config's `model` fields; action_dim -1/None means the dataset's (`action_dim`).

    Shared rule of training and loading: a checkpoint stores -1 and the dataset statistics decide.
    """
    fields = dict(model_fields)
    if fields.get("action_dim", -1) in (-1, None):
        fields["action_dim"] = action_dim
    elif fields["action_dim"] != action_dim:
        raise ValueError(f"model.action_dim={fields['action_dim']} in {source} but the dataset's actions have "
                         f"{action_dim} dimensions; set it to -1 to follow the dataset.")
    return OATConfig.from_dict(fields)


def load_checkpoint(workdir, step: Step = "latest", sharding: ShardingLike = None) -> OATTokenizer:
    """The EMA tokenizer of one training checkpoint (see `resolve_step` for `step`), read directly with Orbax.

    Returns:
      OATTokenizer with the checkpoint's EMA params, its model config and the normalizer fitted from its dataset
      statistics in the run's normalizer mode.
    """
    workdir = _path(workdir)
    manager = _checkpoint_manager(workdir)
    try:
        chosen = _choose_step(manager, workdir, step)
        _verify(workdir / CHECKPOINTS_DIR / str(chosen), f"checkpoint of step {chosen}")
        saved = manager.restore(chosen, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                                 dataset_stats=ocp.args.JsonRestore()))
    finally:
        manager.close()
    source = f"{workdir / CHECKPOINTS_DIR}/{chosen}"
    mode = saved.config.get("normalizer", {}).get("mode", "limits")
    normalizer = ActionNormalizer.from_stats(saved.dataset_stats["action"], mode)
    # a mixture run also records each member's statistics: {"datasets": {label: statistics}}
    dataset_normalizers = {label: ActionNormalizer.from_stats(stats["action"], mode)
                           for label, stats in saved.dataset_stats.get("datasets", {}).items()}
    if "model" not in saved.config:
        raise ValueError(f"The config saved in {source} has no 'model' section; is it an oat_jax training run?")
    config = config_from_run(saved.config["model"], normalizer.action_dim, f"the config saved in {source}")
    params = _restore_params(workdir / CHECKPOINTS_DIR / str(chosen) / "params", config, sharding, key="ema_params")
    logging.info("Loaded the EMA tokenizer of checkpoint %s.", source)
    return OATTokenizer(config, params, normalizer, dataset_normalizers)


def load_pretrained(path, step: Step = None, sharding: ShardingLike = None) -> Pretrained:
    """Loads an OAT tokenizer for use inside a user's jitted / sharded JAX code.

    Args:
      path: an exported tokenizer directory, or a training workdir (local, or any `etils.epath` URL such as gs://).
      step: for a workdir: None = `<workdir>/tokenizer` if present, else the latest checkpoint; 'latest', 'best'
        or an int = the EMA params of that checkpoint. Must be None for a tokenizer directory.
      sharding: where the params go: None = the first local device; one `jax.sharding.Sharding` for every leaf
        (e.g. `NamedSharding(mesh, P())` to replicate over a mesh); or a pytree of Shardings shaped like the params.
    Returns:
      Pretrained(tokenizer, params, tokenize_fn, detokenize_fn); the functions are pure in `params`, do no input
      checks and trace inside `jax.jit` / `shard_map`.
    Raises:
      FileNotFoundError: nothing loadable at `path` (or the requested checkpoint step is missing).
      ValueError: `step` given for a tokenizer directory; a config that does not match its params; bad `step`.
    """
    root = _path(path)
    if not root.exists():
        raise FileNotFoundError(f"No tokenizer at {root}: the path does not exist.")
    if _is_tokenizer_dir(root):
        if step is not None:
            raise ValueError(f"{root} is an exported tokenizer directory (one set of params); step={step!r} applies "
                             f"only to a training workdir. Pass step=None.")
        tokenizer = _load_tokenizer_dir(root, sharding)
    elif step is None and _is_tokenizer_dir(root / checkpoint.WORKDIR_SUBDIR):
        tokenizer = _load_tokenizer_dir(root / checkpoint.WORKDIR_SUBDIR, sharding)
    else:
        tokenizer = load_checkpoint(root, "latest" if step is None else step, sharding)
    return Pretrained(tokenizer, tokenizer.params, tokenizer.tokenize_fn, tokenizer.detokenize_fn)
