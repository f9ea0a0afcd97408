"""Benchmarks of tokenizer latency and throughput, train step time and FLOP utilisation, data throughput and peak
host memory: the phases (`phases`, `tokenizer_phase`, and `train_phase` / `data_phase`, which import the training
code and the data pipelines and are imported only when they run),
running them in subprocesses (`runner`), the machine description (`machine`), FLOP counts (`costs`), targets
(`targets`) and the report tables (`report`). Timings use `oat_jax.timing`.

The command line is `python -m experiments.benchmark`; one phase runs with `python -m oat_jax.benchmarks.phases`.
"""
