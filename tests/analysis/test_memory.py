"""analysis/memory.py: the min/max downsampler, step clocks and sample sets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import memory


# The downsampler ----------------------------------------------------------------------------------
def test_a_short_series_is_left_as_it_is():
    x, y = memory.downsample_min_max([1, 2, 3], [5, 4, 6], max_points=10)
    assert x.tolist() == [1, 2, 3] and y.tolist() == [5, 4, 6]


@pytest.mark.parametrize("n, max_points", [(36_000, 2000), (2001, 2000), (10_007, 100), (5, 2)])
def test_downsampling_caps_the_points_and_keeps_every_extreme(n, max_points):
    rng = np.random.default_rng(0)
    x = np.arange(n, dtype=float)
    y = rng.normal(100.0, 1.0, n)
    y[n // 3] = 1000.0  # a one-sample spike
    y[2 * n // 3] = -50.0  # and a dip

    kept_x, kept_y = memory.downsample_min_max(x, y, max_points)

    assert len(kept_x) <= max_points
    assert kept_y.max() == 1000.0 and kept_y.min() == -50.0
    assert kept_x[kept_y.argmax()] == n // 3  # the spike stays where it happened
    assert np.all(np.diff(kept_x) > 0)  # still in x order, no point twice
    assert set(zip(kept_x, kept_y)) <= set(zip(x, y))  # real samples, not averages


def test_every_bucket_keeps_its_own_min_and_max():
    y = np.tile([0.0, 10.0, 5.0, 7.0], 1000)  # 4,000 points, every bucket of 4 holds a 0 and a 10
    _, kept_y = memory.downsample_min_max(np.arange(y.size), y, max_points=2000)
    assert kept_y.tolist() == [0.0, 10.0] * 1000


def test_downsampling_to_fewer_than_two_points_is_refused():
    with pytest.raises(ValueError, match="max_points must be at least 2, got 1"):
        memory.downsample_min_max([1, 2, 3], [1, 2, 3], max_points=1)


def test_sample_times_map_to_steps_between_step_end_times():
    clock = memory.StepClock(np.array([10.0, 11.0, 13.0]), np.array([1.0, 2.0, 3.0]), np.array([1, 1, 2]))
    assert clock.step_at([10.5, 12.0, 5.0, 99.0]).tolist() == [1.5, 2.5, 1.0, 3.0]
    assert clock.epoch_ends() == [(11.0, 2)]
    assert clock.time_of(3) == 13.0 and clock.time_of(7) is None


def test_a_sample_set_returns_one_runs_series_in_time_order():
    frame = pd.DataFrame({"run_id": [1, 1, 2, 1, 1], "time": [3.0, 1.0, 2.0, 2.0, 0.5],
                          "source": ["torch", "torch", "torch", "tensorflow", "host"],
                          "name": ["allocated"] * 4 + ["rss"], "value": [30.0, 10.0, 99.0, 20.0, 5.0], "unit": "bytes"})
    samples = memory.SampleSet(frame)
    points = samples.points(1, ("torch", "tensorflow"), ["allocated"])
    assert points["value"].tolist() == [10.0, 20.0, 30.0]
    assert samples.points(3, ("torch",), ["allocated"]).empty
    assert samples.first_time(1) == 0.5 and samples.sources_of(1) == {"torch", "tensorflow", "host"}
    assert samples.has("host", "rss") and not samples.has("nvml", "gpu_power")
    assert memory.SampleSet(frame.iloc[:0]).points(1, ("torch",), ["allocated"]).empty
