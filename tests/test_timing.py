"""oat_jax.timing: repeats, warm-up, the time budget, blocking on results and the summary statistics."""

import time

import pytest

from oat_jax import timing


def test_summarize_orders_the_statistics():
    stats = timing.summarize([0.3, 0.1, 0.2, 0.4, 0.5])
    assert stats["samples"] == 5 and stats["min_s"] == 0.1 and stats["median_s"] == pytest.approx(0.3)
    assert stats["min_s"] <= stats["p10_s"] <= stats["median_s"] <= stats["p90_s"]
    with pytest.raises(ValueError):
        timing.summarize([])


def test_time_calls_warms_up_blocks_on_each_result_and_counts_repeats():
    calls, blocked = [], []
    stats = timing.time_calls(lambda: calls.append(1) or len(calls), 4, warmup=2, block=blocked.append)
    assert len(calls) == 6 and blocked == [1, 2, 3, 4, 5, 6] and stats["samples"] == 4
    assert stats["min_s"] >= 0.0


def test_time_calls_stops_at_the_budget_once_min_samples_are_taken():
    stats = timing.time_calls(lambda: time.sleep(0.01), 1000, max_seconds=0.0, min_samples=3)
    assert stats["samples"] == 3 and stats["median_s"] >= 0.01
    assert timing.time_calls(lambda: None, 2, max_seconds=0.0, min_samples=3)["samples"] == 2


def test_seconds_per_call_blocks_on_the_last_result_only():
    blocked = []
    seconds = timing.seconds_per_call(iter(range(10)).__next__, 5, block=blocked.append)
    assert blocked == [4] and seconds >= 0.0
    clock = timing.Stopwatch()
    time.sleep(0.01)
    assert clock.elapsed() >= 0.01
