"""analysis/formatting.py: durations, numbers, NaN, error lines and ordinals as the pages show them."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.formatting import error_summary, format_duration, format_number, format_percent, ordinal
from analysis.summary import metric_stats


@pytest.mark.parametrize("seconds, text", [
    (None, "—"), (0.035, "35 ms"), (4.24, "4.2 s"), (42.4, "42 s"), (185, "3 min 05 s"), (3720, "1 h 02 min"),
])
def test_format_duration_reads_like_a_person_would_say_it(seconds, text):
    assert format_duration(seconds) == text


def test_nan_metrics_show_as_nan_and_are_left_out_of_medians():
    values = {"samples_per_s": [100.0, math.nan, 300.0], "train_loss": [1.0, math.nan]}
    frame = pd.DataFrame([dict(run_id=1, name=name, step=step, epoch=step, wall_time=0.0, value=value)
                          for name, series in values.items() for step, value in enumerate(series, start=1)])
    stats = metric_stats(frame)
    assert stats.at[(1, "samples_per_s"), "median"] == 200.0
    assert format_number(stats.at[(1, "train_loss"), "last"]) == "NaN"
    assert format_percent(math.nan) == "NaN"


def test_error_summary_is_the_last_non_empty_line():
    assert error_summary("Traceback\n  File x\nValueError: bad\n\n") == "ValueError: bad"
    assert error_summary(None) == ""


@pytest.mark.parametrize("n, text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
                                     (13, "13th"), (21, "21st"), (112, "112th")])
def test_ordinal(n, text):
    assert ordinal(n) == text
