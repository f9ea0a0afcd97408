"""Data pipelines for oat_jax: RLDS in, tf.data batches of action chunks out (never imports oat_jax).

Modules: `loader` (make_chunk_dataset, DatasetSpec), `statistics` (get_dataset_statistics), `splits` (episode
split and process sharding), `chunking` (trajectory-level tf transforms), `rlds_reader` / `rlds_writer` (RLDS
I/O), `convert` (hdf5/zarr/npz -> RLDS CLI), `metaworld` (scripted Meta-World demonstrations CLI).
"""

import os

EMBEDDED_DATASET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded", "metaworld_mt10")
"""RLDS builder directory of the committed Meta-World MT10 scripted-demonstration dataset."""
EMBEDDED_HELDOUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded", "metaworld_heldout")
"""RLDS builder directory of the committed unseen-task evaluation set: 2 scripted demonstrations of each of the 40
Meta-World tasks outside MT10 (none of them is in EMBEDDED_DATASET_DIR)."""
EMBEDDED_DATASETS = {"metaworld_mt10": EMBEDDED_DATASET_DIR, "metaworld_heldout": EMBEDDED_HELDOUT_DIR}
"""Names accepted wherever a config takes an RLDS builder directory (e.g. config.data.eval_datasets)."""
