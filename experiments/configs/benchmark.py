r"""Benchmark config for `python -m experiments.benchmark`.

  python -m experiments.benchmark                                          # full run (paper sizes)
  python -m experiments.benchmark --config=experiments/configs/benchmark.py:quick --out=/tmp/bench.json
  python -m experiments.benchmark --config.tokenizer.dtypes='("float32",)' --phases=tokenizer

Variants: '' (the full benchmark) and 'quick' (tiny model and sizes, one repeat: a smoke test, seconds).
Any field can be overridden with --config.<field>=<value>.
"""

import ml_collections

from experiments.configs import oat as oat_configs

VARIANTS = ("quick",)


def apply_quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks `config` in place to the smoke-test sizes (tiny model, tiny batches, one repeat) and returns it."""
    tiny = dict(enc_width=32, enc_depth=1, enc_heads=2, dec_width=32, dec_depth=1, dec_heads=2, dec_ffn_dim=64,
                horizon=8, num_tokens=4, levels=(4, 3, 3))
    config.model_overrides = ml_collections.ConfigDict(tiny)
    config.warmup = 1
    config.max_seconds = 2.0
    config.matmul.update(size=128, repeats=1)
    config.matmul.dtypes = ("float32",)
    config.tokenizer.action_dims = ml_collections.ConfigDict({"metaworld": 4})
    config.tokenizer.update(dtypes=("float32",), prefix_lengths=(1, 4), throughput_batches=(8,), latency_repeats=1,
                            throughput_repeats=1, api_repeats=1)
    config.train.update(dtypes=("float32",), batch_sizes=(8,), repeats=1, multi_batch_sizes=(8,))
    config.data.update(batch_size=16, batches=2, warmup=1, repeats=1, cache=(False,), in_memory=False,
                       jpeg_episodes=4, jpeg_steps=40, jpeg_size=32)
    return config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Benchmark settings; `arg` = comma-separated variants (see the module docstring)."""
    variants = {a.strip() for a in (arg or "").split(",") if a.strip()}
    unknown = sorted(variants - set(VARIANTS))
    if unknown:
        raise ValueError(f"Unknown benchmark config variant(s) {unknown}; choose from {VARIANTS}.")
    config = ml_collections.ConfigDict()
    config.seed = 0  # PRNG seed of the (untrained) params and the random inputs.
    config.warmup = 3  # untimed calls after compilation, before the timed ones.
    config.max_seconds = 20.0  # stop repeating one measurement after this long (at least 3 samples are kept).
    # OATConfig fields applied to every model (empty = the paper's sizes); 'quick' makes the model tiny.
    config.model_overrides = ml_collections.ConfigDict()

    config.matmul = ml_collections.ConfigDict()
    config.matmul.size = 2048  # n of the n x n x n matmul timed for the machine's peak FLOP/s.
    config.matmul.repeats = 10  # timed matmuls (per dtype).
    config.matmul.dtypes = ("float32", "bfloat16")  # matmul dtypes timed.

    config.tokenizer = ml_collections.ConfigDict()
    # name -> action_dim of the tokenizers timed: the paper's LIBERO model and the Meta-World one.
    config.tokenizer.action_dims = ml_collections.ConfigDict({"paper": 7, "metaworld": 4})
    config.tokenizer.dtypes = ("float32", "bfloat16")  # compute dtypes (OATConfig.dtype).
    config.tokenizer.prefix_lengths = (1, 2, 4, 8)  # k: tokens decoded (detokenize); tokenize has no k.
    config.tokenizer.latency_batch = 1  # batch of the latency measurement.
    config.tokenizer.throughput_batches = (256, 4096)  # batches of the throughput measurements.
    config.tokenizer.latency_repeats = 200  # timed calls at the latency batch.
    config.tokenizer.throughput_repeats = 5  # timed calls at each throughput batch.
    config.tokenizer.api_repeats = 200  # timed calls of the validated Python API (tok.tokenize/detokenize).

    config.train = ml_collections.ConfigDict()
    config.train.config = "paper"  # name of the experiments/configs/oat.py variant below (a label in the results).
    # The training config whose model, optimizer, EMA and data settings the train and data phases use.
    config.training = oat_configs.get_config(config.train.config)
    config.train.action_dim = 7  # D_a of the trained model (the paper's LIBERO setting).
    config.train.dtypes = ("float32", "bfloat16")  # compute dtypes of the model.
    config.train.batch_sizes = (64, 256)  # global batches timed on one device.
    config.train.repeats = 10  # timed steps per setting.
    config.train.multi_devices = 8  # simulated CPU devices of the `train_multi` phase (a subprocess).
    config.train.multi_batch_sizes = (64, 256)  # global batches timed on the multi-device mesh (float32).

    config.data = ml_collections.ConfigDict()
    config.data.dataset = ""  # RLDS builder directory ('' = the embedded Meta-World dataset).
    config.data.horizon = 32  # actions per chunk.
    config.data.batch_size = 256  # chunks per batch.
    config.data.batches = 200  # timed batches per window.
    config.data.warmup = 20  # untimed batches before each window.
    config.data.repeats = 5  # timed windows (each builds the pipeline anew).
    config.data.cache = (False, True)  # tf.data pipeline without / with the in-memory trajectory cache.
    config.data.in_memory = True  # also time the training loop's in-memory batcher (oat_jax.training.data).
    # A generated RLDS dataset with a camera in every step, as published datasets have (0 episodes = skip it).
    config.data.jpeg_episodes = 200  # episodes of it.
    config.data.jpeg_steps = 100  # steps per episode.
    config.data.jpeg_size = 224  # camera height and width (JPEG).

    if "quick" in variants:
        apply_quick(config)
    return config
