"""What the pages say about each run — status, mode, device or queue state, progress, elapsed time, ETA —
computed once for a whole frame of runs, one vectorised column per fact.

The frame is db.run_table.runs_overview's (the Runs table, the run picker) or runs_frame's, built
from Run objects (Compare, Devices): a single run is a one-row frame. Every page reads these facts
from here, so a run reads the same on every page.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from analysis.formatting import ordinal
from db import queries
from db.models import (
    CANCELLED, DIVERGED, FAILED, FINISHED, LOST, NON_FINITE_LOSS, OUT_OF_MEMORY, QUEUED, RUNNING, Run,
)
from engine.batches import steps_per_epoch
from engine.catalog import FRAMEWORKS, default_mode
from engine.executors.base import device_label
from engine.executors.ray import RAY_CPU, RAY_GPU, RAY_PLACEMENTS
from engine.spec import RunSpec, SpecError

# Plain symbols, not emoji: table cells are drawn on a canvas, where emoji fonts are often missing.
STATUS_BADGES = {QUEUED: "○ queued", RUNNING: "● running", FINISHED: "✓ finished", FAILED: "✗ failed",
                 DIVERGED: "△ diverged", CANCELLED: "■ cancelled", LOST: "? lost"}
# Cancelled is a user's choice, not a fault: slate, not red; lost (a runner that vanished) its own pink.
STATUS_COLORS = {QUEUED: "#6B7280", RUNNING: "#B45309", FINISHED: "#15803D", FAILED: "#B91C1C",
                 DIVERGED: "#7C3AED", CANCELLED: "#475569", LOST: "#BE185D"}
UNKNOWN_STATUS_COLOR = "#6B7280"
# Why a run ended early, in words; a plain error adds nothing to "failed", so it has none. A lost
# run says whether its process ended (this host saw it go) or its heartbeat stopped (another host's).
REASON_LABELS = {OUT_OF_MEMORY: "out of memory", NON_FINITE_LOSS: "loss not finite",
                 queries.PROCESS_GONE: "process ended", queries.NO_HEARTBEAT: "no heartbeat"}
# A run handed to Ray that has no process yet (Run.placed_device is one of engine.executors.ray's
# RAY_PLACEMENTS): what it waits for, in words.
RAY_QUEUE_WORDS = {RAY_GPU: "in Ray's queue, waiting for a free GPU", RAY_CPU: "in Ray's queue, waiting for free CPUs"}
assert set(RAY_QUEUE_WORDS) == set(RAY_PLACEMENTS), "a Ray placement without words"
DEFAULT_PRECISION = "fp32"  # runs stored before precisions existed trained in fp32

# What runs_frame builds: the columns of runs_overview the facts read, plus the host a run ran on.
RUN_FRAME_COLUMNS = [
    "id", "status", "reason", "framework", "model", "dataset", "spec_mode", "summary_mode", "precision",
    "placed_device", "asked_device", "environment_device", "hostname", "diverged_at_step", "epoch",
    "total_epochs", "step", "total_steps", "spec", "started_at", "finished_at",
]
FACT_COLUMNS = ["status_words", "status", "mode", "precision", "device", "progress", "elapsed_s", "eta_s"]


def runs_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Run objects as a frame of runs_overview's columns (RUN_FRAME_COLUMNS), in the order given."""
    rows = []
    for run in runs:
        spec, summary, environment = run.spec or {}, run.summary or {}, run.environment or {}
        rows.append({
            "id": run.id, "status": run.status, "reason": run.reason, "framework": run.framework,
            "model": run.model, "dataset": run.dataset, "spec_mode": spec.get("mode"),
            "summary_mode": summary.get("mode"), "precision": spec.get("precision"),
            "placed_device": run.placed_device, "asked_device": spec.get("device"),
            "environment_device": environment.get("device"), "hostname": run.hostname,
            "diverged_at_step": summary.get("diverged_at_step") if run.status == DIVERGED else None,
            "epoch": run.epoch or 0, "total_epochs": run.total_epochs or 0, "step": run.step or 0,
            "total_steps": run.total_steps, "spec": run.spec, "started_at": run.started_at,
            "finished_at": run.finished_at,
        })
    frame = pd.DataFrame(rows, columns=RUN_FRAME_COLUMNS)
    for name in ("started_at", "finished_at"):
        frame[name] = pd.to_datetime(frame[name])
    frame["total_steps"] = pd.to_numeric(frame["total_steps"]).astype(float)
    return frame


def run_facts(frame: pd.DataFrame, now: Optional[datetime] = None) -> pd.DataFrame:
    """FACT_COLUMNS for every row of the frame, in its order and index.

    progress is a fraction (0..1); elapsed_s and eta_s are seconds, NaN where unknown.
    """
    now = now or queries.utcnow()
    progress, elapsed, words = progress_fractions(frame), elapsed_seconds(frame, now), status_words(frame)
    return pd.DataFrame({
        "status_words": words, "status": status_texts(frame, words), "mode": modes(frame),
        "precision": precisions(frame), "device": device_texts(frame), "progress": progress,
        "elapsed_s": elapsed, "eta_s": eta_seconds(frame, progress, elapsed),
    }, index=frame.index, columns=FACT_COLUMNS)


def facts_of(runs: Sequence[Run], now: Optional[datetime] = None) -> pd.DataFrame:
    """run_facts of Run objects, indexed by run id: facts_of(runs).at[run.id, "status"]."""
    frame = runs_frame(runs)
    return run_facts(frame, now).set_axis(frame["id"].tolist())


def _or(values: pd.Series, fallback: Any) -> pd.Series:
    """values, with fallback where a value is missing or empty (as `value or fallback` would)."""
    return values.mask(values.isna() | (values == ""), fallback)


def status_words(frame: pd.DataFrame) -> pd.Series:
    """The status with why it ended early: "failed · out of memory", "diverged at step 12", "lost · no heartbeat"."""
    status, reason = frame["status"], frame["reason"]
    diverged = status == DIVERGED
    words = status.astype(object).copy()
    at_step = diverged & frame["diverged_at_step"].notna()
    words[at_step] = words[at_step] + " at step " + frame.loc[at_step, "diverged_at_step"].astype(int).astype(str)
    reason_words = reason.map(REASON_LABELS)
    said = reason_words.notna() & ~(diverged & (reason == NON_FINITE_LOSS))  # "diverged" says it already
    words[said] = words[said] + " · " + reason_words[said]
    return words


def status_texts(frame: pd.DataFrame, words: Optional[pd.Series] = None) -> pd.Series:
    """status_words (given, or read here) behind the status's symbol: "✗ failed · out of memory"."""
    symbols = {name: badge[:-len(name)] for name, badge in STATUS_BADGES.items() if badge.endswith(name)}
    return frame["status"].map(symbols).fillna("") + (status_words(frame) if words is None else words)


def modes(frame: pd.DataFrame) -> pd.Series:
    """Execution mode id ("eager", "graph" ...): as reported, else as asked, else its framework's default
    (runs stored before modes existed ran in the default one)."""
    defaults = frame["framework"].map({fw: default_mode(fw) for fw in FRAMEWORKS}).fillna("—")
    reported, asked = _or(frame["summary_mode"], np.nan), _or(frame["spec_mode"], np.nan)
    mode = reported.where(reported.notna(), asked)
    return mode.where(mode.notna(), defaults)


def precisions(frame: pd.DataFrame) -> pd.Series:
    """"fp32" or "mixed"."""
    return _or(frame["precision"], DEFAULT_PRECISION)


def device_texts(frame: pd.DataFrame, place_in_queue: bool = True, host: bool = False) -> pd.Series:
    """Where a run ran or will run ("cuda:1", "2 × CPU"), or what a queued run waits for: "starting on cuda:0",
    "in Ray's queue, waiting for a free GPU", "waiting for a free device (2nd in queue)".

    A queued run's place counts every queued run in the frame, oldest first, as the scheduler takes
    them (place_in_queue=False leaves it out, for a table with a place column of its own); host adds
    where a starting run starts. Runs stored before placement existed show the device their
    environment recorded.
    """
    queued = frame["status"] == QUEUED
    # "cpu,cpu" reads "2 × CPU"; object even when all are missing (a float column takes no string prefix)
    placed = _or(frame["placed_device"], np.nan).map(device_label, na_action="ignore").astype(object)
    text = placed.fillna(frame["environment_device"].fillna("").astype(str)).astype(object)
    starting = queued & placed.notna()
    text[starting] = "starting on " + placed[starting]
    if host and starting.any():
        hostname = _or(frame.loc[starting, "hostname"], np.nan)
        text[starting] = text[starting] + (" (" + hostname + ")").fillna("")
    in_ray = queued & placed.isin(list(RAY_QUEUE_WORDS))
    text[in_ray] = placed[in_ray].map(RAY_QUEUE_WORDS)
    waiting = queued & placed.isna()
    if waiting.any():
        asked = _or(frame.loc[waiting, "asked_device"], "auto")
        text[waiting] = "waiting for " + asked.mask(asked == "auto", "a free device")
        if place_in_queue:
            place = frame.loc[queued, "id"].rank(method="first").astype(int)[waiting]
            text[waiting] = text[waiting] + " (" + place.map(ordinal) + " in queue)"
    return text


def total_steps(spec: Optional[dict], total_epochs: int) -> Optional[int]:
    """Optimizer steps a run of this spec takes in total epochs; None when the spec cannot say (an old one)."""
    try:
        parsed = RunSpec.from_dict(spec)
    except (SpecError, TypeError):
        return None
    return steps_per_epoch(parsed, parsed.train_size()) * total_epochs


def progress_fractions(frame: pd.DataFrame) -> pd.Series:
    """Fraction of each run done, by optimizer steps (finer than epochs), else by epochs; 1.0 once finished."""
    steps = frame["total_steps"].astype(float).copy()
    for index in frame.index[(steps.fillna(0) == 0) & frame["spec"].notna()]:  # stored before total_steps was
        derived = total_steps(frame.at[index, "spec"], int(frame.at[index, "total_epochs"]))
        steps[index] = derived if derived else np.nan
    by_steps = (frame["step"] / steps).clip(upper=1.0)
    epochs = frame["total_epochs"].astype(float)
    by_epochs = (frame["epoch"] / epochs.where(epochs > 0)).clip(upper=1.0).fillna(0.0)
    fraction = by_steps.where(steps > 0, by_epochs)
    return fraction.mask(frame["status"] == FINISHED, 1.0).astype(float)


def elapsed_seconds(frame: pd.DataFrame, now: datetime) -> pd.Series:
    """Seconds each run has trained: start to finish, or start to now while running; NaN before the start."""
    started = frame["started_at"].to_numpy(dtype="datetime64[ns]")
    ended = frame["finished_at"].to_numpy(dtype="datetime64[ns]").copy()
    ended[np.isnat(ended)] = np.datetime64(now, "ns")
    return pd.Series((ended - started) / np.timedelta64(1, "s"), index=frame.index).clip(lower=0.0)


def eta_seconds(frame: pd.DataFrame, progress: pd.Series, elapsed: pd.Series) -> pd.Series:
    """Seconds left for each running run: its elapsed time extrapolated by the fraction left; NaN before any
    progress and for runs not running."""
    running = frame["status"] == RUNNING
    return (elapsed * (1.0 - progress) / progress.where(progress > 0)).where(running & (elapsed > 0))


def status_badge(status: str) -> str:
    return STATUS_BADGES.get(status, status)


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, UNKNOWN_STATUS_COLOR)
