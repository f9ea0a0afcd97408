"""Policy training data at scale: peak memory of a training run against the dataset's size (in memory vs streamed),
and the train-step rate of the two feeds measured side by side in one process.

`experiments/recipes/policy_data_scale.py` is the command line; docs/POLICY.md ("Streamed policy data") holds the
figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any, Sequence

import jax
import ml_collections

from oat_jax.action_tokenizers import load_action_tokenizer
from oat_jax.policy.model import TokenPolicyModel
from oat_jax.training import loop, optim, run_config, sharding
from oat_jax.training.policy import data as policy_data
from oat_jax.training.policy import trainer as policy_trainer
from oat_jax.training.policy.step import init_policy_state, make_policy_train_step

_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def peak_rss_mib(command: Sequence[str], log_path: str, env: dict | None = None) -> float:
    """Runs `command` under `/usr/bin/time -v` (its output to `log_path`) and returns its peak resident set size in
    MiB; RuntimeError with the log's tail when it fails."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(["/usr/bin/time", "-v", *command], stdout=log, stderr=subprocess.STDOUT, env=env)
    text = open(log_path, encoding="utf-8").read()
    found = _RSS.findall(text)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}); the end of {log_path}:\n"
                           f"{text[-3000:]}")
    return int(found[-1]) / 1024.0


def memory_rows(root: str, episodes: Sequence[int], steps: int, size: int, train_steps: int,
                shuffle_buffer: int, feeds: Sequence[str] = ("streamed", "in memory")) -> list[dict[str, Any]]:
    """Peak RSS of a Diffusion Policy training run (`policy.py:dp,runlocal`: the camera, the state and the
    instruction of the data; `train_steps` updates) on generated RLDS datasets of `episodes` episodes each of `steps`
    steps with a `size` x `size` JPEG camera (`data_phase.write_jpeg_rlds`), for each feed. One row per (feed,
    episodes): {"feed", "episodes", "pairs", "peak_rss_mib", "wall_s"}."""
    from oat_jax.benchmarks.data_phase import write_jpeg_rlds

    rows = []
    for n in episodes:
        path = os.path.join(root, f"jpeg{size}_{n}ep")
        if not os.path.isfile(os.path.join(path, "dataset_info.json")):
            write_jpeg_rlds(path, n, steps, size, seed=n)
        for feed in feeds:
            workdir = os.path.join(root, f"run_{feed.replace(' ', '_')}_{n}ep")
            command = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/policy.py:dp,runlocal",
                       f"--workdir={workdir}", f"--config.data.path={path}",
                       "--config.data.state_keys=('observation/state',)",
                       "--config.data.image_keys=('observation/image',)",
                       "--config.data.language_key=language_instruction",
                       f"--config.data.shuffle_buffer={shuffle_buffer if feed == 'streamed' else 0}",
                       f"--config.train.num_steps={train_steps}", f"--config.train.eval_every={train_steps}",
                       f"--config.checkpoint.every={train_steps}", "--config.data.max_eval_chunks=256"]
            start = time.perf_counter()
            rss = peak_rss_mib(command, workdir + ".log")
            rows.append({"feed": feed, "episodes": n, "pairs": n * steps, "peak_rss_mib": rss,
                         "wall_s": time.perf_counter() - start})
    return rows


def interleaved_rates(config: ml_collections.ConfigDict, windows: int, window_steps: int) -> dict[str, Any]:
    """Train-step rates of the token policy of `config` (a policy.py config with config.tokenizer.path) fed in
    memory (targets tokenized once) and streamed (config.data.shuffle_buffer pairs, targets on the device), measured
    in alternating windows of `window_steps` steps in this one process (one compiled step per feed, one state), so
    both see the same machine load. The first window of each feed (compilation, pipeline start) is not counted.

    Returns {"in memory": [steps/s per window], "streamed": [...], "batch": B, "train_pairs": M}."""
    run = run_config.policy_run(config)
    tokenizer = load_action_tokenizer(os.path.expanduser(run.tokenizer.path))
    horizon, k, batch = int(tokenizer.horizon), int(run.data.n_obs_steps), int(run.train.batch_size)
    vocabulary = tuple(policy_data.instructions(run.data))
    normalizers, _ = policy_data.fit_normalizers(run.data, run.obs_normalizer.mode)
    on_host, streamed, targets, frozen = policy_data.token_feeds(tokenizer, normalizers,
                                                                 policy_data.member_labels(run.data))
    mesh, batch_sharding = loop.mesh_and_batch_sharding(run)
    rows = sharding.process_rows(batch_sharding, batch)
    in_memory = policy_data.PairBatches(on_host(policy_data.load_pairs(run.data, "train", horizon, k, vocabulary)),
                                        batch, rows, int(run.seed))
    stream = policy_data.StreamedPairs(run.data, horizon, k, len(rows), int(run.seed), 0, vocabulary, streamed)
    pconfig = policy_trainer.policy_config(run, tokenizer, in_memory.arrays, len(vocabulary))
    model = TokenPolicyModel(pconfig)
    tx, schedule = optim.make_optimizer(run.optim, int(run.train.num_steps))
    init = lambda: init_policy_state(model, tx, int(run.seed))  # noqa: E731
    state_sharding = sharding.tree_shardings(jax.eval_shape(init), mesh, run.sharding)
    state = jax.jit(init, out_shardings=state_sharding)()
    step_fn = make_policy_train_step(model, tx, schedule, run.ema, targets)
    feeds = {"in memory": (in_memory, loop.jit_train_step(step_fn, state_sharding, batch_sharding)),
             "streamed": (stream, loop.jit_train_step(step_fn, state_sharding, batch_sharding, frozen))}
    rates: dict[str, list[float]] = {name: [] for name in feeds}
    position = {name: 0 for name in feeds}
    for window in range(windows + 1):
        for name, (batches, train_step) in feeds.items():
            start = position[name]
            with loop.prefetched(batches, start, start + window_steps, batch_sharding, batch) as feed:
                clock = time.perf_counter()
                for _ in range(window_steps):
                    state, _ = train_step(state, next(feed))
                jax.block_until_ready(state)
                if window:
                    rates[name].append(window_steps / (time.perf_counter() - clock))
            position[name] += window_steps
    return {**rates, "batch": batch, "train_pairs": len(next(iter(in_memory.arrays.values())))}
