"""oat_jax: Ordered Action Tokenization (OAT) in JAX/Flax."""

import setuptools

setuptools.setup(
    name="oat_jax",
    version="0.1.0",
    description="Ordered Action Tokenization (OAT) for JAX/Flax: ordered, prefix-decodable action tokens.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["oat_jax", "oat_jax.*", "data_pipelines", "data_pipelines.*",
                                               "experiments", "experiments.*"]),
    include_package_data=True,
    package_data={"data_pipelines": ["embedded/**/*"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.0",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.11.0",
        "numpy>=1.26",
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9.6",
        "importlib_resources>=6.0",  # tfds needs it to write datasets (converters, Meta-World generator)
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "test": ["pytest>=8.0", "hypothesis>=6.100", "pytest-xdist>=3.5", "tokenizers>=0.15"],
        "convert": ["h5py>=3.10", "zarr>=2.16"],
        "beam": ["apache-beam>=2.60"],  # data_pipelines.beam_convert: conversion on Apache Beam (--num_workers)
        "metaworld": ["metaworld>=3.0"],
        "baselines": ["tokenizers>=0.15"],  # oat_jax.action_tokenizers.fast: the FAST baseline's BPE
        "torch": ["torch>=2.1", "dill>=0.3"],  # oat_jax.torch_import: read reference PyTorch checkpoints (.pt)
    },
)
