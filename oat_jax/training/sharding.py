"""Device mesh, sharding rules (as data) and host-to-global batch assembly.

Mesh axes: ('data', 'fsdp'), `config.sharding.fsdp` devices on the second. The batch is split over both axes (every
device gets a distinct slice of examples); params and optimizer state follow `config.sharding.rules`: an ordered
list of (regex, rule) pairs matched with `re.search` against a leaf's '/'-joined path, first match wins, where rule is
  'replicate'          a full copy on every device,
  'fsdp'               the largest dimension divisible by the 'fsdp' axis size is split over it (leaves smaller
                       than `config.sharding.fsdp_min_size` elements stay replicated),
  a tuple of axis names (or None), one per dimension: an explicit PartitionSpec.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every device


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0,
                                 auto: bool = False, cpu_collectives: str = "gloo") -> None:
    """Calls `jax.distributed.initialize` when the run spans several processes. Must run before any JAX op.

    Args:
      coordinator_address: 'host:port' of process 0 ('' = not set: one process, unless `auto`).
      num_processes / process_id: the run's process count and this process's index (with coordinator_address).
      auto: let JAX detect the cluster (a TPU pod, a SLURM job).
      cpu_collectives: 'gloo' (needed for several CPU processes) or '' (JAX's default).
    """
    explicit = bool(coordinator_address)
    if not explicit and not auto:
        return
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if explicit:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--coordinator_address is set, so --num_processes must be >= 1 and 0 <= --process_id "
                             f"< --num_processes; got num_processes={num_processes}, process_id={process_id}.")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()
    logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices.",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ('data', 'fsdp') mesh: `fsdp` devices on the fsdp axis, the rest on the data axis.

    Args:
      fsdp: `config.sharding.fsdp`: devices on the fsdp axis (1 = pure data parallelism, -1 = every device).
      devices: devices to use (default: all global devices, process-major order).
    Returns:
      A `Mesh` of shape (len(devices) // fsdp, fsdp).
    """
    devices = list(jax.devices() if devices is None else devices)
    n, fsdp = len(devices), int(fsdp)
    fsdp = n if fsdp == -1 else fsdp
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"config.sharding.fsdp={fsdp} must divide the {n} devices in use (or be -1 = all of "
                         f"them; 1 = data parallelism only).")
    return Mesh(np.asarray(devices, dtype=object).reshape(n // fsdp, fsdp), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: leading dimension split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value fully copied on every device (scalars, metrics)."""
    return NamedSharding(mesh, P())


def path_to_name(path: Sequence[Any]) -> str:
    """'/'-joined name of a pytree key path, e.g. 'opt_state/1/0/mu/encoder/Dense_0/kernel'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def leaf_spec(name: str, shape: Sequence[int], rules: Sequence[tuple[str, Any]], fsdp_size: int,
              min_size: int) -> P:
    """PartitionSpec of one leaf from the first rule whose regex matches `name` (replicated when none does)."""
    for pattern, rule in rules:
        if re.search(pattern, name) is None:
            continue
        if rule == "replicate":
            return P()
        if rule == "fsdp":
            return _fsdp_spec(shape, fsdp_size, min_size)
        if isinstance(rule, (tuple, list)):
            if len(rule) != len(shape):
                raise ValueError(f"Sharding rule {pattern!r} -> {rule} has {len(rule)} entries but leaf {name!r} "
                                 f"has shape {tuple(shape)}; give one axis name (or None) per dimension.")
            return P(*rule)
        raise ValueError(f"Unknown sharding rule {rule!r} for {pattern!r}: use 'replicate', 'fsdp' or a tuple of "
                         f"mesh axis names.")
    return P()


def tree_shardings(tree: Any, mesh: Mesh, sharding_cfg: ml_collections.ConfigDict) -> Any:
    """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs) following `config.sharding`.

    Args:
      tree: pytree of arrays / jax.ShapeDtypeStruct (e.g. the abstract train state).
      mesh: the ('data', 'fsdp') mesh.
      sharding_cfg: `config.sharding` with `rules` ((regex, rule) pairs) and `fsdp_min_size`.
    """
    rules = [tuple(r) for r in sharding_cfg.rules]
    fsdp_size = mesh.shape["fsdp"]

    def one(path, leaf):
        return NamedSharding(mesh, leaf_spec(path_to_name(path), np.shape(leaf), rules, fsdp_size,
                                             int(sharding_cfg.fsdp_min_size)))

    return jax.tree_util.tree_map_with_path(one, tree)


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
    """Raises ValueError unless the global batch splits evenly over processes and devices."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch % n_dev or global_batch % n_proc:
        raise ValueError(f"Global batch {global_batch} cannot be split evenly over the {n_dev} devices of the mesh "
                         f"(and the {n_proc} processes). Choose config.train.batch_size as a multiple of {n_dev}.")


def process_rows(sharding: NamedSharding, global_batch: int) -> np.ndarray:
    """Global row indices (sorted) of a batch that this process's devices hold under `sharding`.

    The process-local batch for `jax.make_array_from_process_local_data` is the global batch at these rows.
    """
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(*index[0].indices(global_batch)))
    return np.asarray(sorted(rows), dtype=np.int64)


def to_global(local_batch: Any, sharding: NamedSharding, global_batch: int) -> Any:
    """Assembles a global jax.Array batch from this process's rows (numpy arrays with leading dim = local rows)."""
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (global_batch,) + x.shape[1:])

    return jax.tree.map(one, local_batch)
