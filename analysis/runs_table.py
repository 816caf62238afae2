"""The Runs table and the run picker's rows, from db.run_table.runs_overview: one vectorised column at a time.

The facts in them (status, mode, device, progress, ETA) are run_facts'; this module puts them in
display units beside the rest of each row.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Optional

import pandas as pd

from analysis import run_facts
from analysis.formatting import format_bytes, format_duration, format_percent
from analysis.run_styles import UNKNOWN_FRAMEWORK_COLOR
from db.models import RUNNING
from db.run_table import ENDED_EARLY
from engine.catalog import framework_label

COLUMNS = ["id", "name", "tags", "status", "framework", "experiment", "workers", "mode", "precision", "device", "epochs",
           "progress", "eta", "duration", "result", "train_loss", "throughput", "weights", "created", "error"]
PICKER_COLUMNS = ["id", "name", "framework", "experiment", "mode", "precision", "seed", "status", "group", "tags",
                  "created"]
ROWS_SHOWN = 15  # rows in view before the table scrolls; the table virtualises the rest
ROW_HEIGHT_PX = 35


def runs_table(frame: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """One row per run of run_table.runs_overview, in its order and index, in display units."""
    facts = run_facts.run_facts(frame, now)
    running = frame["status"] == RUNNING
    eta = pd.Series("", index=frame.index, dtype=object)
    eta[running] = _durations(facts.loc[running, "eta_s"])
    return pd.DataFrame({
        "id": frame["id"],
        "name": frame["name"].fillna(""),
        "tags": frame["tags"],
        "status": facts["status"],
        "framework": frame["framework"].map(framework_label),
        "experiment": frame["model"] + " / " + frame["dataset"],
        # Blank for one worker: the column gives way on a page of single-worker runs (ui/run_selection.py).
        "workers": [f"{int(n)}" if n == n and int(n) > 1 else "" for n in frame.get("workers", 1 + 0 * frame["id"])],
        "mode": facts["mode"],
        "precision": facts["precision"],
        "device": facts["device"],
        "epochs": _fractions(frame["epoch"], frame["total_epochs"]),
        "progress": 100 * facts["progress"],
        "eta": eta,
        "duration": _durations(facts["elapsed_s"]),
        "result": result_texts(frame),
        "train_loss": frame["train_loss"].astype(float),
        "throughput": frame["samples_per_s"].round(),
        "weights": [format_bytes(b) if b is not None and b == b else "" for b in frame["weights_bytes"]],
        "created": frame["created_at"].dt.tz_localize("UTC"),
        "error": frame["error"].where(frame["status"].isin(ENDED_EARLY), "").fillna(""),
    }, index=frame.index, columns=COLUMNS)


def picker_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The run picker's rows in display form (names and tags stay text: a table cell never renders markup)."""
    return pd.DataFrame({
        "id": frame["id"],
        "name": frame["name"].fillna(""),
        "framework": frame["framework"].map(framework_label),
        "experiment": frame["model"] + " / " + frame["dataset"],
        "mode": run_facts.modes(frame),
        "precision": frame["precision"].fillna(run_facts.DEFAULT_PRECISION),
        "seed": frame["seed"],
        "status": run_facts.status_texts(frame),
        "group": frame["group_tag"].fillna(""),
        "tags": frame["tags"],  # lists already (run_table.runs_overview)
        "created": pd.to_datetime(frame["created_at"]).dt.tz_localize("UTC"),
    }, columns=PICKER_COLUMNS)


def _fractions(done: pd.Series, total: pd.Series) -> list[str]:
    """"3/5" per row; each distinct pair is formatted once (most runs share a few)."""
    pairs = list(zip(done.astype(int).tolist(), total.astype(int).tolist()))
    texts = {pair: f"{pair[0]}/{pair[1]}" for pair in set(pairs)}
    return [texts[pair] for pair in pairs]


def _durations(seconds: pd.Series) -> list[str]:
    """format_duration of each value ("—" for NaN); a plain loop: pandas' map costs twice as much."""
    return [format_duration(None if math.isnan(value) else value) for value in seconds.tolist()]


def result_texts(frame: pd.DataFrame) -> pd.Series:
    """Test accuracy, else "φ estimate (true φ)"; NaN where recorded non-finite, nothing where never recorded."""
    texts = [_result_text(accuracy, phi, phi_true) for accuracy, phi, phi_true in
             zip(frame["test_accuracy"], frame["phi_estimate"], frame["phi_true"])]
    return pd.Series(texts, index=frame.index, dtype=object)


def _result_text(accuracy: Optional[float], phi: Optional[float], phi_true: Optional[float]) -> str:
    if accuracy is not None:
        return f"{format_percent(accuracy)} accuracy"
    if phi is not None:
        return f"φ {phi:.4f}" + (f" (true {phi_true:.4f})" if phi_true is not None else "")
    return ""


def status_colour(text: str) -> str:
    """The colour of a status cell ("✗ failed · out of memory" is a failed one)."""
    words = text.split(" ")
    return run_facts.STATUS_COLORS.get(words[1] if len(words) > 1 else "", UNKNOWN_FRAMEWORK_COLOR)


def table_height(rows: int) -> int:
    """Pixels for the header and up to ROWS_SHOWN rows: more rows scroll inside the table."""
    return ROW_HEIGHT_PX * (min(rows, ROWS_SHOWN) + 1) + 3
