"""analysis/run_styles.py: a colour per run in its framework's hue, the framework's line style."""
from __future__ import annotations

from analysis.run_styles import FRAMEWORK_COLORS, FRAMEWORK_PALETTES, trace_styles
from tests.analysis.test_run_facts import make_run


def test_each_run_gets_a_shade_of_its_framework_and_the_framework_s_line_style():
    runs = [make_run(id=1), make_run(id=2, framework="tensorflow"), make_run(id=5)]
    styles = trace_styles(runs)
    assert styles[1]["color"] == FRAMEWORK_COLORS["torch"]  # a pair looks the same on every page
    assert styles[2]["color"] == FRAMEWORK_COLORS["tensorflow"]
    assert styles[5]["color"] != styles[1]["color"] and styles[5]["color"] in FRAMEWORK_PALETTES["torch"]
    assert styles[1]["dash"] == styles[5]["dash"] == "solid" and styles[2]["dash"] == "dash"
    assert styles == trace_styles(list(reversed(runs)))  # stable: the order runs arrive in does not matter
    assert styles[1]["width"] > styles[2]["width"]  # coinciding curves stay visible
