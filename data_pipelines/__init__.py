"""Data pipelines for oat_jax: RLDS in, tf.data batches of action chunks out (never imports oat_jax).

Modules: `loader` (make_chunk_dataset, DatasetSpec), `statistics` (get_dataset_statistics), `splits` (episode
split and process sharding), `chunking` (trajectory-level tf transforms), `rlds_reader` / `rlds_writer` (RLDS
I/O), `convert` (hdf5/zarr/npz -> RLDS CLI), `metaworld` (scripted Meta-World demonstrations CLI).
"""

import os

EMBEDDED_DATASET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded", "metaworld_mt10")
"""RLDS builder directory of the committed Meta-World MT10 scripted-demonstration dataset."""
