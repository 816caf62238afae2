"""What each run's framework traced or compiled, and the input shapes its steps met: a table, no Streamlit.

From the run summary's compile_events (each framework's own counters: TorchDynamo, tf.function)
and shapes (engine/step_clock.py ShapeLog: the first step of each new shape is timed alone).
ui/profile_section.py draws it on the Compare page's Speed tab; tests call it directly.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import pandas as pd

from analysis.formatting import format_number
from db.models import Run

COLUMNS = ["run", "compiler", "compiled", "compile s", "input shapes", "new-shape steps cost ms", "not compiled"]


def compile_frame(runs: Sequence[Run], labels: dict[int, str]) -> pd.DataFrame:
    """One row per run that recorded compile events or shapes (runs from before issue 15 have neither)."""
    rows = []
    for run in runs:
        summary = run.summary or {}
        events, shapes = summary.get("compile_events"), summary.get("shapes")
        if events is None and shapes is None:
            continue
        rows.append({
            "run": f"#{run.id} {labels[run.id]}",
            "compiler": (events or {}).get("tool") or "none (eager)",
            "compiled": compiled_text(events or {}),
            "compile s": (events or {}).get("compile_s"),
            "input shapes": (shapes or {}).get("distinct"),
            "new-shape steps cost ms": (shapes or {}).get("later_shapes_extra_ms"),
            "not compiled": "; ".join((events or {}).get("not_compiled") or []),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def compiled_text(events: dict[str, Any]) -> str:
    """"3 frames (3 graphs), 0 graph breaks" / "traced once; 2 XLA executables" / "" for eager."""
    tool = events.get("tool")
    if tool == "torch.compile":
        return (f"{events.get('compiled_frames', 0)} of {events.get('frames', 0)} frames "
                f"({events.get('unique_graphs', 0)} graphs), {events.get('graph_breaks', 0)} graph breaks")
    if tool == "tf.function":
        traces = events.get("traces") or {}
        text = f"step traced {traces.get('step', 0)}×, {events.get('retraces', 0)} retraces"
        if "xla_executables" in events:
            text += f"; {events['xla_executables']} XLA executables (one per input shape)"
        return text
    return ""


def compile_sentence(frame: pd.DataFrame) -> Optional[str]:
    """A line for what stands out: a compiler that captured nothing, or new shapes that cost compile time."""
    notes = []
    for row in frame.to_dict("records"):
        if row["not compiled"]:
            notes.append(f"{row['run']}: torch.compile left part of the model uncompiled ({row['not compiled']}); "
                         f"that part ran eagerly.")
        cost = row["new-shape steps cost ms"]
        if cost is not None and cost == cost and cost > 1:  # NaN-safe: a run without shapes has none
            notes.append(f"{row['run']}: the steps that met a new input shape took {format_number(cost, 3)} "
                         f"ms more than steady steps (tracing or compiling for the shape).")
    return " ".join(notes) or None
