"""Where every trained artifact lives on disk, and the one module that reads and writes those layouts.

    tokenizer directory      config.json (OATConfig), normalizer.json, [dataset_normalizers.json], params/ (Orbax),
                             action_tokenizer.json ({"type": "oat", ...}), integrity.json (SHA-256 of every file)
    policy directory         policy.json, params/, tokenizer/ (a tokenizer directory of any type), integrity.json
    training workdir         checkpoints/<step>/  one Orbax CheckpointManager step per save (items below)
                             tokenizer/ or policy/  the final EMA artifact; frozen_tokenizer/ (policy runs: the
                             tokenizer the policy was trained on); metrics.jsonl, final_metrics.json, tb/, *.png
    checkpoint step items    params ({"params", "ema_params"}), train_state, config (the run's ConfigDict as JSON),
                             then per run kind: tokenizer runs `dataset_stats` (the statistics the normalizers were
                             fitted on) and `tokenizer` ({"config", "normalizer", "dataset_normalizers"}): a
                             checkpoint step is itself a loadable tokenizer; policy runs `policy` (policy.json's
                             content) and `frozen_tokenizer` ({"name", "dir"}: the tokenizer's copy in the workdir).

`resolve_tokenizer(path, step)` accepts a tokenizer directory, a checkpoint step directory or a training workdir
(with step None / 'latest' / 'best' / an int); `read_tokenizer` returns its parts. Steps written before the
`tokenizer` item existed are rebuilt from the run config's `model` fields and the `dataset_stats` (the first layout;
tests/fixtures/legacy_v1 keeps one of each). Remote paths (gs://...) are read through `etils.epath`; writes are
local. Nothing here imports the tokenizer or policy classes: callers build those from the parts.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import tarfile
from typing import Any, Callable, Mapping, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath

from oat_jax import integrity
from oat_jax.atomic_dir import atomic_directory, recover
from oat_jax.config import OATConfig
from oat_jax.model import abstract_params, check_params
from oat_jax.normalizer import Normalizer

# ----- file and directory names -----
CONFIG_FILE = "config.json"
NORMALIZER_FILE = "normalizer.json"
DATASET_NORMALIZERS_FILE = "dataset_normalizers.json"
PARAMS_DIR = "params"
TYPE_FILE = "action_tokenizer.json"  # {"type": "oat" | "bin" | "fast", ...} in every saved tokenizer directory
POLICY_FILE = "policy.json"
POLICY_TOKENIZER_DIR = "tokenizer"  # inside a policy directory
WORKDIR_TOKENIZER = "tokenizer"  # <workdir>/tokenizer: the final EMA tokenizer of a tokenizer run
WORKDIR_POLICY = "policy"  # <workdir>/policy: the final EMA policy of a policy run
WORKDIR_FROZEN_TOKENIZER = "frozen_tokenizer"  # <workdir>/frozen_tokenizer: the tokenizer a policy run trains on
CHECKPOINTS_DIR = "checkpoints"
# <workdir>/checkpoints/step_manifests.json: written by runs that give every step an integrity manifest, so a step
# of theirs without one is an error (steps of older runs, which lack the marker, load unverified).
STEP_MANIFESTS_FILE = "step_manifests.json"
METRICS_FILE = "metrics.jsonl"  # one {"step": s, "eval/...": ...} record per line
FINAL_METRICS_FILE = "final_metrics.json"

# ----- checkpoint items -----
PARAMS_ITEM, TRAIN_STATE_ITEM, RUN_CONFIG_ITEM = "params", "train_state", "config"
STATS_ITEM, TOKENIZER_ITEM = "dataset_stats", "tokenizer"
POLICY_ITEM, FROZEN_TOKENIZER_ITEM = "policy", "frozen_tokenizer"
TOKENIZER_RUN_ITEMS = (PARAMS_ITEM, TRAIN_STATE_ITEM, RUN_CONFIG_ITEM, STATS_ITEM, TOKENIZER_ITEM)
POLICY_RUN_ITEMS = (PARAMS_ITEM, TRAIN_STATE_ITEM, RUN_CONFIG_ITEM, POLICY_ITEM, FROZEN_TOKENIZER_ITEM)
DIFFUSION_RUN_ITEMS = (PARAMS_ITEM, TRAIN_STATE_ITEM, RUN_CONFIG_ITEM, POLICY_ITEM)  # no tokenizer
ALL_ITEMS = tuple(dict.fromkeys(TOKENIZER_RUN_ITEMS + POLICY_RUN_ITEMS + (STATS_ITEM,)))
BEST_METRIC = {"tokenizer": "val_mse", "policy": "val_loss"}  # lower is better; logged as eval/<name>

Step = int | str | None
ShardingLike = Any  # None, one jax.sharding.Sharding for every leaf, or a pytree of Shardings shaped like the params


class TokenizerParts(NamedTuple):
    """What `read_tokenizer` returns: an OAT tokenizer's config, float32 params (jax arrays), normalizer, the
    per-dataset normalizers of a mixture ({} otherwise), and a description of where it came from."""

    config: OATConfig
    params: dict
    normalizer: Normalizer
    dataset_normalizers: dict[str, Normalizer]
    source: str


class Location(NamedTuple):
    """A resolved artifact: `kind` 'directory' (a saved tokenizer or policy directory at `path`) or 'checkpoint'
    (step `step` of the training run in `workdir`, whose step directory is `path`)."""

    kind: str
    path: epath.Path
    workdir: epath.Path | None = None
    step: int | None = None


def as_path(path) -> epath.Path:
    """An `epath.Path` for a local path (absolute, ~ expanded) or a URL such as gs://bucket/run."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


def read_json(path) -> Any:
    """The JSON content of file `path`; ValueError naming the file when it is not valid JSON."""
    path = epath.Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} is damaged or not valid JSON ({e}); save the artifact again or restore the file "
                         f"from a copy.") from e


def _verify(path: epath.Path, what: str, required: bool = False) -> None:
    """Checks a local directory against its integrity manifest (remote paths are not hashed). `required`: a
    directory saved whole with its manifest (a tokenizer with action_tokenizer.json, a policy), so a missing one is
    an IntegrityError; tokenizers of the first layout load unverified without one."""
    if "://" in str(path):
        return
    if not integrity.verify(str(path), what) and required:
        raise integrity.IntegrityError(
            f"{path} has no {integrity.MANIFEST_FILE}: every {what} of this layout is saved with one, so it was "
            f"deleted (or the directory was copied without it) and the files cannot be checked. Save the {what} "
            f"again, or load with verify=False at your own risk.")


def _verify_step(path: epath.Path, step: int) -> None:
    """Checks checkpoint step directory `path` against its manifest; in a run that marks its checkpoints
    (`STEP_MANIFESTS_FILE`) a step without one is an IntegrityError, other runs' steps load unverified."""
    if "://" in str(path):
        return
    if not integrity.verify(str(path), f"checkpoint of step {step}") and (path.parent / STEP_MANIFESTS_FILE).exists():
        raise integrity.IntegrityError(
            f"{path} has no {integrity.MANIFEST_FILE}, though this run records one for every checkpoint step: it "
            f"was deleted, or the run was killed within moments of saving step {step}. Running the training command "
            f"again (it resumes) records it; verify=False loads the step unchecked, at your own risk.")


def mark_step_manifests(checkpoints_dir: str) -> None:
    """Writes `STEP_MANIFESTS_FILE` in a local checkpoint directory (atomically: a temporary file renamed)."""
    path = os.path.join(checkpoints_dir, STEP_MANIFESTS_FILE)
    if os.path.isfile(path):
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": 1, "every_step_has": integrity.MANIFEST_FILE}, f)
    os.replace(tmp, path)



# ----- params (Orbax) -----
def save_params(directory: str, params: Any) -> None:
    """Writes a param tree (any arrays; fetched to the host) as an Orbax checkpoint at local `directory`. Only this
    process takes part: in a multi-process run one process writes while the others go on (no global barrier)."""
    options = {}
    if jax.process_count() > 1:
        options["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()})
    with ocp.StandardCheckpointer(**options) as checkpointer:
        checkpointer.save(os.fspath(directory), jax.device_get(params))


def _targets(abstract: Any, sharding: ShardingLike) -> Any:
    """`abstract` (ShapeDtypeStruct tree) with the requested shardings attached."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)
    try:
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, sharding)
    except (ValueError, TypeError) as e:
        raise ValueError(f"sharding must be None, one jax.sharding.Sharding for every param, or a pytree of "
                         f"Shardings with the param tree's structure; got {type(sharding).__name__}: {e}") from e


_HAS_PARTIAL_RESTORE = "partial_restore" in inspect.signature(ocp.args.PyTreeRestore).parameters


def restore_params(directory, abstract: Any, sharding: ShardingLike = None, key: str | None = None,
                   check: Callable[[Any], None] | None = None) -> Any:
    """Reads a param tree saved by `save_params` (or entry `key` of a checkpoint's params item, e.g. 'ema_params').

    Args:
      directory: the Orbax checkpoint directory (local path or URL).
      abstract: jax.ShapeDtypeStruct tree of the expected params.
      sharding: None = the first local device; one Sharding for every leaf; or a pytree of Shardings.
      check: called with the saved tree's metadata before reading (raise ValueError to refuse a mismatch).
    Returns:
      the param tree as jax arrays placed with `sharding`.
    """
    directory = epath.Path(directory)
    target = _targets(abstract, sharding)
    item = target if key is None else {key: target}
    with ocp.PyTreeCheckpointer() as checkpointer:
        # Current Orbax wraps the tree in CheckpointMetadata(.item_metadata: TreeMetadata(.tree)); older releases
        # (e.g. 0.11.13, which openpi pins) return the tree metadata itself.
        saved = checkpointer.metadata(directory)
        saved = getattr(saved, "item_metadata", saved)
        saved = getattr(saved, "tree", saved)
        entries = list(saved)
        if key is not None:
            if key not in saved:
                raise ValueError(f"{directory} holds no {key!r} entry (it has {sorted(saved)}); is it a training "
                                 f"checkpoint's params item?")
            saved = saved[key]
        if check is not None:
            check(saved)
        options = {}
        if key is not None and _HAS_PARTIAL_RESTORE:
            options["partial_restore"] = True
        elif key is not None:  # older Orbax restores a whole item: every entry of the params item (the params
            item = {name: target for name in entries}  # and their EMA) has the params' structure
        restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), **options))
    return restored if key is None else restored[key]


# ----- JSON assets of a tokenizer -----
def tokenizer_assets(config: OATConfig, normalizer: Normalizer,
                     dataset_normalizers: Mapping[str, Normalizer] | None = None) -> dict:
    """The JSON-able description of an OAT tokenizer besides its params (a checkpoint's `tokenizer` item)."""
    out = {"config": config.to_dict(), "normalizer": normalizer.to_dict()}
    if dataset_normalizers:
        out["dataset_normalizers"] = {label: n.to_dict() for label, n in dataset_normalizers.items()}
    return out


def _dataset_normalizers(d: Mapping[str, Any], source: str) -> dict[str, Normalizer]:
    if not isinstance(d, Mapping) or not d:
        raise ValueError(f"{source}: expected {{label: normalizer dict, ...}} with at least one dataset")
    return {str(label): Normalizer.from_dict(n) for label, n in d.items()}


def _parse(build: Callable[[], Any], source: str) -> Any:
    try:
        return build()
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{source} is damaged or not a tokenizer file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); save the tokenizer again or restore the file "
                         f"from a copy.") from e


# ----- locating -----
def is_tokenizer_dir(path) -> bool:
    """True if `path` holds an OAT tokenizer directory's config, normalizer and params."""
    path = epath.Path(path)
    return all((path / name).exists() for name in (CONFIG_FILE, NORMALIZER_FILE, PARAMS_DIR))


def _is_step_dir(path: epath.Path) -> bool:
    return path.name.isdigit() and path.parent.name == CHECKPOINTS_DIR and (path / PARAMS_ITEM).exists()


def checkpoint_manager(workdir, items: tuple[str, ...] = ALL_ITEMS) -> ocp.CheckpointManager:
    """A read-only Orbax CheckpointManager over `<workdir>/checkpoints` (FileNotFoundError if there is none)."""
    workdir = as_path(workdir)
    directory = workdir / CHECKPOINTS_DIR
    if not directory.exists():
        raise FileNotFoundError(f"{workdir} holds no training checkpoints ({CHECKPOINTS_DIR}/) and no saved "
                                f"artifact.")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(directory, options=options, item_names=items)


def logged_metric(workdir, name: str) -> dict[int, float]:
    """step -> eval/<name> from `<workdir>/metrics.jsonl` (the last record of a step wins)."""
    path = as_path(workdir) / METRICS_FILE
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get(f"eval/{name}") is not None:
                values[int(record["step"])] = float(record[f"eval/{name}"])
    return values


def best_step(scores: Mapping[int, float]) -> int | None:
    """The step with the lowest score (ties: the later step); None when `scores` is empty."""
    return min(scores, key=lambda s: (scores[s], -s)) if scores else None


def choose_step(manager: ocp.CheckpointManager, workdir, step: Step, metric: str) -> int:
    """The kept step that `step` names: 'latest', 'best' (lowest `metric`: Orbax's saved metrics, else the
    `eval/<metric>` of metrics.jsonl) or a step number.

    Raises FileNotFoundError (no checkpoint / that step is not kept) or ValueError (bad `step`; 'best' without any
    recorded metric)."""
    steps = sorted(manager.all_steps())
    where = as_path(workdir) / CHECKPOINTS_DIR
    if not steps:
        raise FileNotFoundError(f"No complete checkpoint in {where}; train first.")
    if step in (None, "latest"):
        return steps[-1]
    if step == "best":
        logged = logged_metric(workdir, metric)
        scores = {}
        for s in steps:
            value = (manager.metrics(s) or {}).get(metric, logged.get(s))
            if value is not None:
                scores[s] = float(value)
        if not scores:
            raise ValueError(f"No validation metric ({metric}) is recorded for the checkpoints {steps} of "
                             f"{as_path(workdir)}; pass step='latest' or one of these step numbers.")
        return best_step(scores)
    if isinstance(step, bool) or not (isinstance(step, int) or (isinstance(step, str) and step.isdigit())):
        raise ValueError(f"step must be None, 'latest', 'best' or a step number, got {step!r}.")
    if int(step) not in steps:
        raise FileNotFoundError(f"No checkpoint of step {int(step)} in {where}; kept steps: {steps}.")
    return int(step)


def run_kind(step_dir: epath.Path) -> str:
    """'policy' or 'tokenizer': which kind of run wrote checkpoint step `step_dir` (either layout)."""
    if (step_dir / POLICY_ITEM).exists() or (step_dir / FROZEN_TOKENIZER_ITEM).exists():
        return "policy"
    if (step_dir / STATS_ITEM).exists():
        try:
            stats = json.loads((step_dir / STATS_ITEM / "metadata").read_text())
            if "tokenizer_archive" in stats:
                return "policy"  # the first layout kept the policy's metadata in dataset_stats
        except (OSError, ValueError):
            pass
    return "tokenizer"


def resolve_step(workdir, step: Step = "latest") -> int:
    """The checkpoint step of training workdir `workdir` that `step` ('latest', 'best' or an int) names."""
    workdir = as_path(workdir)
    manager = checkpoint_manager(workdir)
    try:
        latest = workdir / CHECKPOINTS_DIR / str(max(manager.all_steps(), default=0))
        return choose_step(manager, workdir, step, BEST_METRIC[run_kind(latest)])
    finally:
        manager.close()


def _checkpoint_location(workdir: epath.Path, step: Step, kind: str) -> Location:
    """The checkpoint of `workdir` that `step` (None = 'latest') names, ranked by `kind`'s validation metric."""
    manager = checkpoint_manager(workdir)
    try:
        chosen = choose_step(manager, workdir, "latest" if step is None else step, BEST_METRIC[kind])
    finally:
        manager.close()
    return Location("checkpoint", workdir / CHECKPOINTS_DIR / str(chosen), workdir, chosen)


def _exists(path: epath.Path, recognise: Callable[[str], bool]) -> None:
    if not path.exists() and "://" not in str(path):
        recover(str(path), recognise)  # a save killed mid-swap (non-Linux fallback) left its copy beside path
    if not path.exists():
        raise FileNotFoundError(f"Nothing at {path}: the path does not exist.")


def resolve_tokenizer(path, step: Step = None) -> Location:
    """Where the OAT tokenizer named by (`path`, `step`) is.

    Args:
      path: a tokenizer directory, a checkpoint step directory (`<workdir>/checkpoints/<step>`), or a tokenizer
        training workdir (local or URL).
      step: for a workdir only: None = `<workdir>/tokenizer` if present, else the latest checkpoint; 'latest',
        'best' or an int = that checkpoint.
    Raises:
      FileNotFoundError: nothing loadable at `path`; ValueError: `step` given for a directory or step directory.
    """
    root = as_path(path)
    _exists(root, lambda p: is_tokenizer_dir(p))
    if is_tokenizer_dir(root) or _is_step_dir(root):
        if step is not None:
            raise ValueError(f"{root} holds one set of params; step={step!r} applies only to a training workdir. "
                             f"Pass step=None.")
        if is_tokenizer_dir(root):
            return Location("directory", root)
        return Location("checkpoint", root, root.parent.parent, int(root.name))
    if step is None and is_tokenizer_dir(root / WORKDIR_TOKENIZER):
        return Location("directory", root / WORKDIR_TOKENIZER)
    kind = read_json(root / TYPE_FILE).get("type") if (root / TYPE_FILE).exists() else None
    if kind not in (None, "oat"):
        raise FileNotFoundError(f"{root} holds a {kind!r} tokenizer, not an OAT one; load it with "
                                f"oat_jax.action_tokenizers.load_action_tokenizer.")
    if not (root / CHECKPOINTS_DIR).exists():
        raise FileNotFoundError(
            f"{root} holds no saved tokenizer: expected {CONFIG_FILE}, {NORMALIZER_FILE} and {PARAMS_DIR}/ there or "
            f"in its {WORKDIR_TOKENIZER}/ subdirectory, or training checkpoints in {CHECKPOINTS_DIR}/ (write one with "
            f"OATTokenizer.save or python -m experiments.train).")
    return _checkpoint_location(root, step, "tokenizer")


# ----- tokenizers -----
def _legacy_tokenizer_assets(run_config: dict, stats: dict, source: str) -> dict:
    """The `tokenizer` item of a step written before it existed: the run's `model` fields (action_dim -1 = the
    data's) and normalizers fitted from `dataset_stats` in the run's normalizer mode."""
    if "model" not in run_config:
        raise ValueError(f"The config saved in {source} has no 'model' section; is it an oat_jax tokenizer run?")
    mode = run_config.get("normalizer", {}).get("mode", "limits")
    normalizer = Normalizer.from_stats(stats["action"], mode)
    fields = dict(run_config["model"])
    if fields.get("action_dim", -1) in (-1, None):
        fields["action_dim"] = normalizer.action_dim
    assets = {"config": fields, "normalizer": normalizer.to_dict()}
    members = stats.get("datasets", {})
    if members:
        assets["dataset_normalizers"] = {label: Normalizer.from_stats(s["action"], mode).to_dict()
                                         for label, s in members.items()}
    return assets


def _checkpoint_json(location: Location, items: tuple[str, ...]) -> dict:
    """The JSON items `items` of a checkpoint step that exist on disk ({name: content})."""
    present = tuple(name for name in items if (location.path / name).exists())
    manager = checkpoint_manager(location.workdir)
    try:
        restored = manager.restore(location.step, args=ocp.args.Composite(
            **{name: ocp.args.JsonRestore() for name in present}))
    finally:
        manager.close()
    return {name: restored[name] for name in present}


def read_tokenizer(path, step: Step = None, sharding: ShardingLike = None, verify: bool = True) -> TokenizerParts:
    """Reads the OAT tokenizer at (`path`, `step`) (see `resolve_tokenizer`).

    Args:
      sharding: where the params go (None: the first local device; a Sharding; or a pytree of Shardings).
      verify: check the files against the SHA-256 manifest written at save time (local paths).
    Raises:
      FileNotFoundError: nothing loadable there; integrity.IntegrityError (a ValueError): a damaged or edited file;
      ValueError: the saved config does not match the saved params.
    """
    location = resolve_tokenizer(path, step)
    if location.kind == "directory":
        if verify:
            _verify(location.path, "tokenizer", required=(location.path / TYPE_FILE).exists())
        assets = {"config": read_json(location.path / CONFIG_FILE),
                  "normalizer": read_json(location.path / NORMALIZER_FILE)}
        if (location.path / DATASET_NORMALIZERS_FILE).exists():
            assets["dataset_normalizers"] = read_json(location.path / DATASET_NORMALIZERS_FILE).get("datasets")
        params_dir, key, source = location.path / PARAMS_DIR, None, str(location.path)
        files = {"config": location.path / CONFIG_FILE, "normalizer": location.path / NORMALIZER_FILE,
                 "dataset_normalizers": location.path / DATASET_NORMALIZERS_FILE}
    else:
        if verify:
            _verify_step(location.path, location.step)
        source = str(location.path)
        saved = _checkpoint_json(location, (TOKENIZER_ITEM, RUN_CONFIG_ITEM, STATS_ITEM))
        if TOKENIZER_ITEM in saved:
            assets = saved[TOKENIZER_ITEM]
        elif run_kind(location.path) == "policy":
            raise FileNotFoundError(f"{source} is a policy checkpoint; load it with TokenPolicy.load.")
        else:
            assets = _legacy_tokenizer_assets(saved.get(RUN_CONFIG_ITEM, {}), saved.get(STATS_ITEM, {}), source)
        params_dir, key = location.path / PARAMS_ITEM, "ema_params"
        files = {name: f"the {name} of {source}" for name in ("config", "normalizer", "dataset_normalizers")}
    config = _parse(lambda: OATConfig.from_dict(assets["config"]), str(files["config"]))
    normalizer = _parse(lambda: Normalizer.from_dict(assets["normalizer"]), str(files["normalizer"]))
    members = assets.get("dataset_normalizers")
    dataset_normalizers = (_parse(lambda: _dataset_normalizers(members, source), str(files["dataset_normalizers"]))
                           if members is not None else {})
    check = lambda saved: check_params(config, saved, source=f"the params saved in {params_dir}")  # noqa: E731
    params = restore_params(params_dir, abstract_params(config), sharding, key=key, check=check)
    return TokenizerParts(config, params, normalizer, dataset_normalizers, source)


def write_tokenizer(path: str, config: OATConfig, params: Any, normalizer: Normalizer,
                    dataset_normalizers: Mapping[str, Normalizer] | None = None, overwrite: bool = False) -> str:
    """Writes an OAT tokenizer directory (layout above) atomically; returns its absolute path.

    `path` must not exist (or be empty) unless `overwrite`, which replaces an existing tokenizer directory only. The
    directory is built beside `path` and swapped in at the end: a crash leaves the old directory or the new one."""
    check_params(config, params)
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    with atomic_directory(path, overwrite, recognise=is_tokenizer_dir, what="tokenizer") as tmp:
        save_params(os.path.join(tmp, PARAMS_DIR), params)
        files = {CONFIG_FILE: config.to_dict(), NORMALIZER_FILE: normalizer.to_dict(),
                 TYPE_FILE: {"type": "oat", "config": config.to_dict()}}
        if dataset_normalizers:
            files[DATASET_NORMALIZERS_FILE] = {"datasets": {k: n.to_dict() for k, n in dataset_normalizers.items()}}
        for name, content in files.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=1)
        integrity.write_manifest(tmp)
    return path


# ----- tokenizers of other types (Bin, FAST): a type file plus their own files -----
def write_typed_directory(path: str, description: dict[str, Any], files: Mapping[str, str] | None = None) -> str:
    """Writes `description` (with a "type" key) to `path/action_tokenizer.json` and the text `files` beside it,
    then the integrity manifest; returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    for name, text in {**(files or {}), TYPE_FILE: json.dumps(description, indent=1)}.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(text)
    integrity.write_manifest(path)
    return path


def read_type(path, expected_type: str | None = None) -> dict[str, Any] | None:
    """The dict in `path/action_tokenizer.json` (after checking the directory's integrity manifest), or None when
    there is none. With `expected_type`: FileNotFoundError if missing, ValueError if it names another type."""
    path = as_path(path)
    file = path / TYPE_FILE
    if not file.exists():
        if expected_type is not None:
            raise FileNotFoundError(f"No {TYPE_FILE} in {path}: not a saved {expected_type!r} tokenizer; write one "
                                    f"with .save(path).")
        return None
    _verify(path, "action tokenizer", required=True)
    description = read_json(file)
    if expected_type is not None and description.get("type") != expected_type:
        raise ValueError(f"{file} describes a {description.get('type')!r} tokenizer, not {expected_type!r}; load it "
                         f"with oat_jax.action_tokenizers.load_action_tokenizer.")
    return description


# ----- policies -----
def is_policy_dir(path) -> bool:
    """True if `path` holds a saved policy directory."""
    return (epath.Path(path) / POLICY_FILE).exists()


def resolve_policy(path, step: Step = None) -> Location:
    """Where the policy named by (`path`, `step`) is: a policy directory, a checkpoint step directory of a policy
    run, or a policy workdir (step None: `<workdir>/policy` if present, else the latest checkpoint)."""
    root = as_path(path)
    _exists(root, lambda p: is_policy_dir(p))
    if is_policy_dir(root) or _is_step_dir(root):
        if step is not None:
            raise ValueError(f"{root} holds one policy; step={step!r} applies only to a training workdir.")
        return (Location("directory", root) if is_policy_dir(root)
                else Location("checkpoint", root, root.parent.parent, int(root.name)))
    if step is None and is_policy_dir(root / WORKDIR_POLICY):
        return Location("directory", root / WORKDIR_POLICY)
    if not (root / CHECKPOINTS_DIR).exists():
        raise FileNotFoundError(f"No saved policy at {root}: expected {POLICY_FILE} there or in its {WORKDIR_POLICY}/ "
                                f"subdirectory (training writes <workdir>/{WORKDIR_POLICY} at the end of a run), or "
                                f"training checkpoints in {CHECKPOINTS_DIR}/.")
    location = _checkpoint_location(root, step, "policy")
    if run_kind(location.path) != "policy":
        raise FileNotFoundError(f"{location.path} is a checkpoint of a tokenizer run, not a policy: load it with "
                                f"OATTokenizer.load or load_action_tokenizer (a policy run's workdir holds "
                                f"{WORKDIR_POLICY}/ and policy checkpoints).")
    return location


def read_policy_metadata(path, step: Step = None) -> dict:
    """The policy.json content of the policy at (`path`, `step`) (see `resolve_policy`) without its params ({} for a
    checkpoint of the first layout, whose policies are token policies)."""
    location = resolve_policy(path, step)
    if location.kind == "directory":
        return read_json(location.path / POLICY_FILE)
    return _checkpoint_json(location, (POLICY_ITEM,)).get(POLICY_ITEM, {})


def read_policy(path, step: Step = None, abstract: Callable[[dict], Any] | None = None,
                verify: bool = True) -> tuple[dict, Any, str]:
    """Reads a policy at (`path`, `step`) (see `resolve_policy`).

    Args:
      abstract: metadata dict -> ShapeDtypeStruct tree of the params (the policy model's).
    Returns:
      (policy.json content, params (the EMA params of a checkpoint), local directory of its frozen tokenizer, or
      None for a policy without one: a diffusion policy).
    """
    location = resolve_policy(path, step)
    if location.kind == "directory":
        if verify:
            _verify(location.path, "policy", required=True)
        meta = read_json(location.path / POLICY_FILE)
        params = _restore_matching(location.path / PARAMS_DIR, abstract, meta, location.path / POLICY_FILE)
        tokenizer_dir = location.path / POLICY_TOKENIZER_DIR
        return meta, params, str(tokenizer_dir) if tokenizer_dir.exists() else None
    if verify:
        _verify_step(location.path, location.step)
    saved = _checkpoint_json(location, (POLICY_ITEM, FROZEN_TOKENIZER_ITEM))
    if POLICY_ITEM not in saved:
        raise FileNotFoundError(f"{location.path} holds no {POLICY_ITEM!r} item (a tokenizer checkpoint, or a policy "
                                f"checkpoint of the first layout: load that run's {WORKDIR_POLICY}/ directory).")
    meta = saved[POLICY_ITEM]
    params = _restore_matching(location.path / PARAMS_ITEM, abstract, meta, f"the {POLICY_ITEM} item of "
                               f"{location.path}", key="ema_params")
    frozen = saved.get(FROZEN_TOKENIZER_ITEM)
    if not frozen:
        return meta, params, None
    tokenizer_dir = str(location.workdir / frozen["dir"])
    if verify:
        check_frozen_tokenizer(tokenizer_dir, frozen, f"the checkpoint of step {location.step}")
    return meta, params, tokenizer_dir


def _restore_matching(params_dir, abstract: Callable[[dict], Any], meta: dict, described_by, key=None) -> Any:
    """The params at `params_dir` in the shapes `abstract(meta)` describes; ValueError naming `described_by` (the
    policy's description) when they do not fit (the description was edited, or belongs to other params)."""
    try:
        target = abstract(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{described_by} does not describe a policy this version can build ({e}); it is damaged or "
                         f"from another version: save the policy again.") from e
    try:
        return restore_params(params_dir, target, key=key)
    except ValueError as e:
        raise ValueError(f"{described_by} does not match the saved params ({str(e).splitlines()[0][:160]}): the "
                         f"config there was edited, or the params belong to another policy. Save the policy again "
                         f"or restore the file.") from e


def tokenizer_fingerprint(directory: str) -> str | None:
    """SHA-256 of a saved tokenizer directory's integrity manifest (which holds the hash of every file): the
    tokenizer's identity, recorded by the policies trained on it. None for a directory without a manifest."""
    manifest = os.path.join(os.fspath(directory), integrity.MANIFEST_FILE)
    return integrity.file_sha256(manifest) if os.path.isfile(manifest) else None


def check_frozen_tokenizer(directory: str, item: dict, what: str) -> None:
    """IntegrityError unless the tokenizer at `directory` is the one the `frozen_tokenizer` item `item` recorded
    (its "sha256", when the item has one) and intact."""
    expected = item.get("sha256")
    if expected is None or "://" in str(directory):
        return
    integrity.verify(str(directory), "frozen tokenizer")
    if tokenizer_fingerprint(directory) != expected:
        raise integrity.IntegrityError(
            f"{directory} is not the tokenizer {what} was trained with (its manifest's SHA-256 differs from the "
            f"recorded {expected[:12]}...): the folder was replaced. Restore it, or load the run's exported "
            f"policy/.")


def write_policy(path: str, meta: dict, params: Any, save_tokenizer: Callable[[str], Any] | None,
                 overwrite: bool = False) -> str:
    """Writes a policy directory atomically: policy.json (`meta`), params/ and tokenizer/ (written by
    `save_tokenizer(directory)`; None: the policy has no tokenizer); returns its absolute path."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    with atomic_directory(path, overwrite, recognise=is_policy_dir, what="policy") as tmp:
        save_params(os.path.join(tmp, PARAMS_DIR), params)
        if save_tokenizer is not None:
            save_tokenizer(os.path.join(tmp, POLICY_TOKENIZER_DIR))
        with open(os.path.join(tmp, POLICY_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        integrity.write_manifest(tmp)
    return path


def policy_run_assets(workdir, step: int) -> tuple[dict | None, str | None]:
    """(the `policy` item or None, the frozen tokenizer directory) of step `step` of a policy run.

    A step of the first layout keeps the tokenizer as a base64 tar.gz in `dataset_stats`; it is unpacked once to
    `<workdir>/frozen_tokenizer` (atomically) and its observation normalizers returned as
    {"obs_normalizers": ...}."""
    workdir = as_path(workdir)
    location = Location("checkpoint", workdir / CHECKPOINTS_DIR / str(step), workdir, step)
    saved = _checkpoint_json(location, (POLICY_ITEM, FROZEN_TOKENIZER_ITEM, STATS_ITEM))
    if FROZEN_TOKENIZER_ITEM in saved:
        directory = str(workdir / saved[FROZEN_TOKENIZER_ITEM]["dir"])
        check_frozen_tokenizer(directory, saved[FROZEN_TOKENIZER_ITEM], f"the run in {workdir}")
        return saved.get(POLICY_ITEM), directory
    legacy = saved.get(STATS_ITEM, {})
    if "tokenizer_archive" not in legacy:
        raise ValueError(f"{location.path} is not a policy checkpoint (no {FROZEN_TOKENIZER_ITEM} item).")
    target = str(workdir / WORKDIR_FROZEN_TOKENIZER)
    if not os.path.exists(target):
        with atomic_directory(target, recognise=lambda p: os.path.isdir(p), what="tokenizer copy") as tmp:
            with tarfile.open(fileobj=io.BytesIO(base64.b64decode(legacy["tokenizer_archive"])), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
    return {"obs_normalizers": legacy["obs_normalizers"]}, target
