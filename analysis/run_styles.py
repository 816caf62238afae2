"""How a run looks on every page: its framework's colour, a shade and marker of its own, its legend name."""
from __future__ import annotations

from typing import Sequence

from db.models import Run
from engine.catalog import framework_label

# One colour per framework on every page. Several runs of one framework take the next shades of
# its hue (reds for PyTorch, blues for TensorFlow), so each run keeps a colour of its own and its
# framework still shows at a glance; the line style says the framework too (solid / dashed).
FRAMEWORK_COLORS = {"torch": "#EE4C2C", "tensorflow": "#1A73E8"}
FRAMEWORK_PALETTES = {
    "torch": ("#EE4C2C", "#9F1239", "#F59E0B", "#DB2777", "#7C2D12", "#FB7185"),
    "tensorflow": ("#1A73E8", "#0E7490", "#6366F1", "#0B3D91", "#22D3EE", "#7C3AED"),
}
FRAMEWORK_DASHES = {"torch": "solid", "tensorflow": "dash"}
UNKNOWN_FRAMEWORK_COLOR = "#6B7280"
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "star")


def framework_color(framework: str) -> str:
    return FRAMEWORK_COLORS.get(framework, UNKNOWN_FRAMEWORK_COLOR)


def trace_name(run: Run) -> str:
    """Legend name of a run in charts and column name in tables: "#3 PyTorch"."""
    return f"#{run.id} {framework_label(run.framework)}"


def trace_styles(runs: Sequence[Run]) -> dict[int, dict]:
    """A colour per run from its framework's palette (by rank among the chosen runs of that framework),
    the framework's line style, a marker per rank.

    The first run of each framework gets the framework's own colour, so a PyTorch/TensorFlow pair
    looks the same on every page. Width and marker size shrink with each run drawn, so curves that
    coincide (a fair pair often does) show as a thin line on a wider one instead of one hiding the other.
    """
    styles, seen = {}, {}
    for index, run in enumerate(sorted(runs, key=lambda r: r.id)):
        rank = seen.get(run.framework, 0)
        seen[run.framework] = rank + 1
        palette = FRAMEWORK_PALETTES.get(run.framework, (UNKNOWN_FRAMEWORK_COLOR,))
        styles[run.id] = {
            "color": palette[rank % len(palette)],
            "dash": FRAMEWORK_DASHES.get(run.framework, "dot"),
            "symbol": SYMBOLS[rank % len(SYMBOLS)],
            "width": max(5.0 - 2.0 * index, 1.5),
            "size": max(12 - 4 * index, 5),
        }
    return styles
