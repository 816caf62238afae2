"""Which runs trained beside other busy processes (their summary's others_busy_cores, engine/monitor.HostLoad).

Import-light on purpose: the CLI says it after every run, and its start-up loads no pandas.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from db.models import Run

BUSY_CORES = 0.25  # other processes holding a quarter of a core on average: a run's speed numbers felt it


def busy_machine(runs: Sequence["Run"], threshold: float = BUSY_CORES) -> list[tuple["Run", float, int]]:
    """(run, cores other processes kept busy on average while it ran, the machine's cores) for each run at or over
    threshold; runs stored before Arena measured it, and multi-worker runs, say nothing and are left out."""
    busy = []
    for run in runs:
        summary = run.summary or {}
        others, cores = summary.get("others_busy_cores"), summary.get("host_cores")
        if others is not None and others >= threshold:
            busy.append((run, float(others), int(cores or 0)))
    return busy
