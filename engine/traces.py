"""A run's stored profiler trace (engine/calibration.py made it, db run_artifacts keeps it): its file name,
the viewer that opens it, and writing it to a file (`python -m engine trace`)."""
from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Optional, Union

from sqlalchemy.orm import sessionmaker

from db import queries
from engine import outfile
from engine.calibration import TRACE_KIND
from engine.export import _database_file  # the SQLite file the sessions read: never written over

# What opens each framework's trace, in one line.
VIEWERS = {
    "torch": "a Chrome trace (JSON): open it in Perfetto (ui.perfetto.dev) or chrome://tracing",
    "tensorflow": "TensorBoard's profile format (an XSpace .xplane.pb): gunzip it into LOGDIR/plugins/profile/RUN/, "
                  "then `tensorboard --logdir LOGDIR` with tensorboard-plugin-profile installed, Profile tab",
}
GZIP_SUFFIX = ".gz"


def trace_filename(run_id: int, framework: str, stored_name: str, compressed: bool = True) -> str:
    """The download's name: run, framework and format, e.g. arena-run-3-torch-trace.json.gz."""
    name = stored_name if compressed else stored_name.removesuffix(GZIP_SUFFIX)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"arena-run-{run_id}-{framework}-{name}")


def viewer_hint(framework: str) -> str:
    """One line naming the viewer that opens the framework's trace."""
    return VIEWERS.get(framework, "the framework's own trace viewer")


def stored_trace(s, run_id: int) -> Optional[dict]:
    """The run's newest trace (list_artifacts' columns, without the bytes), or None."""
    found = queries.list_artifacts(s, [run_id], TRACE_KIND)
    return found[-1] if found else None


def write_trace(sessions: sessionmaker, run_id: int, out_path: Union[str, Path], overwrite: bool = False) -> Path:
    """Write the run's trace to a file, gzip-compressed when its name ends in .gz and as the viewer reads it
    otherwise; into a directory under trace_filename. Never over a database; over an existing file only
    with overwrite. Raises ValueError (outfile.OutputPathError among them) naming the run or the path."""
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        if run is None:
            raise ValueError(f"run {run_id} does not exist")
        framework = run.framework
        found = stored_trace(s, run_id)
    if found is None:
        raise ValueError(f"run {run_id} has no stored trace: runs trained before Arena profiled, with "
                         f"--profile-steps 0, or that did not finish, have none")
    path = Path(out_path).expanduser()
    if path.is_dir():
        path = path / trace_filename(run_id, framework, found["name"])
    databases = [database] if (database := _database_file(sessions)) is not None else []
    outfile.check_destination(path, databases, overwrite)
    with sessions.begin() as s:
        data = queries.get_artifact(s, found["id"]).data
    outfile.write(path, data if path.name.endswith(GZIP_SUFFIX) else gzip.decompress(data), overwrite)
    return path
