"""The training loop's Orbax CheckpointManager: `workdir/checkpoints/<step>/` with the items of `oat_jax.artifacts`.

`params` holds the raw and EMA params (loadable without the optimizer), `train_state` the optimizer state, step, EMA
counter and PRNG key, `config` the run's ConfigDict as JSON, and the run kind's JSON assets (a tokenizer run's
`dataset_stats` and `tokenizer`, a policy run's `policy` and `frozen_tokenizer`), so a step is self-describing and
loadable (`OATTokenizer.load(step_dir)`, `TokenPolicy.load(step_dir)`). Retention: the last `keep_last` checkpoints
plus the `keep_best` ones with the lowest validation MSE. Incomplete (temporary) step directories left by a killed
run are ignored by `latest_step` and removed when the manager starts. Once a step is committed, process 0 records the
SHA-256 of each of its files in `<step>/integrity.json` (`oat_jax.integrity`); `restore` verifies them (a damaged
checkpoint is an error naming the file, never silently wrong params).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as ocp_policy

from oat_jax import artifacts, integrity


class CheckpointStore:
    """Thin wrapper over `ocp.CheckpointManager` with the run's item layout and retention policy.

    Args:
      directory: absolute or relative path of the checkpoints folder (created if missing).
      json_items: names of the run kind's JSON items (artifacts.TOKENIZER_RUN_ITEMS / POLICY_RUN_ITEMS beyond
        params, train_state and config).
      keep_last: number of most recent checkpoints always kept (>= 1).
      keep_best: number of checkpoints with the lowest `best_metric` kept in addition (0 disables).
      best_metric: key of the metrics dict passed to `save` used for ranking (lower is better).
      async_save: write in a background thread; `wait` / `close` block until the write is complete.
      read_only: open an existing directory for restoring only (nothing is written or deleted).
    """

    def __init__(self, directory: str, json_items: tuple[str, ...], keep_last: int = 2, keep_best: int = 1,
                 best_metric: str = "val_mse",
                 async_save: bool = True, read_only: bool = False):
        if keep_last < 1:
            raise ValueError(f"config.checkpoint.keep_last must be >= 1, got {keep_last}.")
        self.best_metric = best_metric
        policies = [ocp_policy.LatestN(n=keep_last)]
        if keep_best > 0:
            policies.append(ocp_policy.BestN(get_metric_fn=lambda m: -float(m[best_metric]), n=keep_best,
                                             keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp_policy.AnyPreservationPolicy(policies),
            best_fn=lambda m: float(m[best_metric]), best_mode="min",  # also makes Orbax persist the metrics
            enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only, create=not read_only,
            read_only=read_only)
        self.json_items = tuple(json_items)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=artifacts.ALL_ITEMS)
        self._unhashed: list[int] = []  # committed (or committing) steps whose integrity manifest is not written
        self._verified: set[int] = set()  # steps already checked (restore_json then restore read the same step)
        if not read_only and jax.process_index() == 0 and "://" not in str(self.manager.directory):
            # Every step of this run gets a manifest; a step a killed run committed without one gets it now (this
            # process is the run's writer), and loaders refuse a marked run's step that lacks one.
            self._unhashed = self.all_steps()
            self._hash_committed()
            artifacts.mark_step_manifests(str(self.manager.directory))

    def step_dir(self, step: int) -> str:
        """Directory of the checkpoint of `step`."""
        return os.path.join(str(self.manager.directory), str(step))

    def _hash_committed(self) -> None:
        """Writes the integrity manifest of every step saved since the last call (call after the writes finished)."""
        pending, self._unhashed = self._unhashed, []
        if jax.process_index() != 0 or "://" in str(self.manager.directory):
            return
        for step in pending:
            path = self.step_dir(step)
            if os.path.isdir(path) and not integrity.has_manifest(path):
                integrity.write_manifest(path)

    def verify(self, step: int) -> bool:
        """Checks the checkpoint of `step` against its integrity manifest (False: it has none, e.g. the run was
        killed before the manifest was written). Raises integrity.IntegrityError naming a damaged file."""
        if "://" in str(self.manager.directory):
            return False
        if step in self._verified:
            return True
        checked = integrity.verify(self.step_dir(step), f"checkpoint of step {step}")
        if checked:
            self._verified.add(step)
        return checked

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint kept on disk, ascending."""
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """Step of the kept checkpoint with the lowest validation metric (None if none has metrics)."""
        scores = {}
        for step in self.all_steps():
            metrics = self.manager.metrics(step) or {}
            if self.best_metric in metrics:
                scores[step] = float(metrics[self.best_metric])
        return artifacts.best_step(scores)

    def save(self, step: int, state: Any, config_json: dict, assets: dict[str, dict],
             metrics: dict[str, float] | None = None) -> None:
        """Starts saving `state` (a `TrainState`) at `step`; asynchronous unless disabled. Collective: call on every
        process.

        Args:
          assets: {item name: JSON content} for every name of `json_items`.
          metrics: scalar validation metrics of this step (must contain `best_metric` to count for best-k).
        """
        params = {"params": state.params, "ema_params": state.ema_params}
        rest = {"step": state.step, "opt_state": state.opt_state, "ema_count": state.ema_count, "rng": state.rng}
        if set(assets) != set(self.json_items):
            raise ValueError(f"checkpoint assets {sorted(assets)} do not match the items {sorted(self.json_items)}")
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), train_state=ocp.args.StandardSave(rest),
                                  config=ocp.args.JsonSave(config_json),
                                  **{name: ocp.args.JsonSave(content) for name, content in assets.items()})
        if self._unhashed:
            self.manager.wait_until_finished()
            self._hash_committed()
        self.manager.save(step, args=args, metrics=metrics, force=True)
        self._unhashed.append(step)

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restores the `TrainState` of the checkpoint at `step` (verified) into the shapes/dtypes/shardings of
        `abstract_state` (a `TrainState` of jax.ShapeDtypeStruct with `.sharding`)."""
        self.verify(step)
        params = {"params": abstract_state.params, "ema_params": abstract_state.ema_params}
        rest = {"step": abstract_state.step, "opt_state": abstract_state.opt_state,
                "ema_count": abstract_state.ema_count, "rng": abstract_state.rng}
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params), train_state=ocp.args.StandardRestore(rest)))
        return abstract_state.replace(params=out.params["params"], ema_params=out.params["ema_params"],
                                      **out.train_state)

    def restore_json(self, step: int, names: tuple[str, ...] = ()) -> dict[str, Any]:
        """{name: JSON content} of the run config and the items `names` that the checkpoint at `step` (verified)
        holds (steps of the first layout lack some), without touching any array."""
        self.verify(step)
        present = [n for n in (artifacts.RUN_CONFIG_ITEM,) + tuple(names)
                   if os.path.isdir(os.path.join(self.step_dir(step), n))]
        out = self.manager.restore(step, args=ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in present}))
        return {n: out[n] for n in present}

    def wait(self) -> None:
        """Blocks until the pending asynchronous save (if any) is committed, then records its integrity manifest."""
        self.manager.wait_until_finished()
        self._hash_committed()

    def close(self) -> None:
        """Waits for pending saves, records their integrity manifests and releases the manager's resources."""
        self.manager.wait_until_finished()
        self._hash_committed()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """jax.ShapeDtypeStruct tree with the shapes/dtypes of `tree` and the given shardings (restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
