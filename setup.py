"""oat_jax: Ordered Action Tokenization (OAT) in JAX/Flax.

`pip install oat_jax` installs the tokenizer core only (load a tokenizer or policy, tokenize, detokenize, map tokens
into a language model's vocabulary): jax, flax, orbax-checkpoint and numpy, no TensorFlow and no plotting. The
extras add the rest; the lower bounds are the oldest versions the tests run (the core under openpi's pins:
tests/test_pinned_versions.py).

    [data]      TFDS / tf.data pipelines (data_pipelines: RLDS reading, writing, loader, statistics)
    [train]     training and evaluation (experiments.train): [data] + optax, ml-collections, absl, plots, TensorBoard
    [convert]   robomimic / LIBERO HDF5 and zarr converters: [data] + h5py, zarr
    [lerobot]   LeRobot dataset converter (v2.1 / v3.0): [data] + pyarrow, PyAV, Pillow
    [beam]      conversions on Apache Beam: [data] + apache-beam
    [metaworld] scripted Meta-World demonstrations and closed-loop evaluation: [data] + metaworld
    [export]    jax.export artifacts (oat_jax.serialization): flatbuffers
    [baselines] the FAST baseline's BPE (tokenizers)
    [torch]     reading reference PyTorch checkpoints
    [test]      everything the test suite needs
"""

import os
import tempfile

import setuptools

CORE = [
    "jax>=0.5.3",
    "flax>=0.10.2",
    "orbax-checkpoint>=0.11.13",
    "numpy>=1.26",
    "etils[epath]>=1.5",  # epath: local and gs:// artifact paths (an orbax dependency we import directly)
]
DATA = [
    "tensorflow-cpu>=2.16",
    "tensorflow-datasets>=4.9.6",
    "importlib_resources>=6.0",  # tfds needs it to write datasets (converters, Meta-World generator)
    "tqdm>=4.66",
]
TRAIN = DATA + [
    "optax>=0.2.3",
    "ml-collections>=0.1.1",
    "absl-py>=2.0",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
]
EXTRAS = {
    "data": DATA,
    "train": TRAIN,
    "convert": DATA + ["h5py>=3.10", "zarr>=2.16", "numcodecs>=0.15"],  # numcodecs < 0.15 unpickles
    "lerobot": DATA + ["pyarrow>=14", "av>=12", "pillow>=9"],
    "beam": DATA + ["apache-beam>=2.60"],
    "metaworld": DATA + ["metaworld>=3.0"],
    "export": ["flatbuffers>=24.3.25"],
    "baselines": ["tokenizers>=0.15"],
    "torch": ["torch>=2.1", "dill>=0.3"],
}
EXTRAS["test"] = sorted({req for name in ("train", "convert", "lerobot", "beam", "metaworld", "export", "baselines")
                         for req in EXTRAS[name]} | {"pytest>=8.0", "hypothesis>=6.100", "pytest-xdist>=3.5"})

# An install builds in a temporary directory, so the source tree keeps no build/ or *.egg-info folder.
_BUILD_BASE = os.path.join(tempfile.gettempdir(), "oat_jax_build")
os.makedirs(_BUILD_BASE, exist_ok=True)  # setuptools refuses an egg_base that does not exist yet (a fresh machine)

setuptools.setup(
    name="oat_jax",
    version="0.1.0",
    description="Ordered Action Tokenization (OAT) for JAX/Flax: ordered, prefix-decodable action tokens.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `experiments/` (configs and command lines) runs from a checkout (`python -m experiments.train`); it is not
    # installed, so it cannot collide with another project's top-level `experiments` package.
    packages=setuptools.find_packages(include=["oat_jax", "oat_jax.*", "data_pipelines", "data_pipelines.*"]),
    include_package_data=True,
    package_data={"data_pipelines": ["embedded/**/*"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    options={"build": {"build_base": _BUILD_BASE}, "egg_info": {"egg_base": _BUILD_BASE}},
)
