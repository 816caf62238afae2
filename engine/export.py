"""Export runs at full fidelity (every recorded point, no downsampling) as CSV, JSON or TensorBoard event files."""
from __future__ import annotations

import io
import json
import math
import operator
import re
import shlex
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from db.models import Run
from db.session import finite
from engine import outfile

if TYPE_CHECKING:  # the frames come from db.queries; only runs.csv builds one here (imported there)
    import pandas as pd

FORMATS = ("csv", "json", "tensorboard")
FILE_SUFFIXES = {"csv": ".csv.zip", "json": ".json", "tensorboard": ".tensorboard.zip"}
EXPORT_VERSION = 1  # "arena_export" in the JSON document; bump when its shape changes
NON_FINITE_NOTE = ("null in metrics, samples and tensor_stats values means a non-finite value (NaN or +/-inf) was "
                   "recorded there, e.g. a diverged loss; JSON has no token for it")
CSV_README = """Arena export: every recorded point, no downsampling.

runs.csv          one row per run; spec.* columns are the run's full spec (nested keys joined with dots)
metrics.csv       every metric point: names starting with "step/" are per optimizer step, the rest per epoch
samples.csv       memory and utilisation samples (time in unix seconds)
tensor_stats.csv  per-layer weight/gradient statistics per epoch (histograms are in the JSON export)
deployments.csv   one row per run and exported format (Deploy page): status, size, load, parity, threads
deployment_latency.csv  per run, format and batch size: one call's latency p50/p95/p99 (ms) and samples/s
deployment_serving.csv  per run, format, batching and concurrency: served latency p50/p99 (ms), requests/s

"nan" in a value column means a non-finite value was recorded there (a diverged loss, say).
Times are UTC: *_at columns in ISO 8601, wall_time and time in unix seconds.
"""
IDS_IN_FILE_NAME = 8  # more run ids than this are summarised in an export's file name
SAMPLE_MEMORY_UNIT = "bytes"  # samples in this unit go under memory/, the rest (%, W ...) under system/
EVENT_FILE_VERSION = "brain.Event:2"
# TensorBoard shows 1,000 points per curve unless told otherwise (scalars=0, "all", showed none in
# TensorBoard 2.21 with its fast data server); this keeps every point of runs up to a million steps.
TENSORBOARD_SAMPLES_HINT = "--samples_per_plugin scalars=1000000"

Sessions = Union[Session, sessionmaker]


@dataclass(frozen=True)
class _Loaded:
    """Everything an export writes, read in one transaction."""

    runs: list[dict[str, Any]]
    metrics: pd.DataFrame
    samples: pd.DataFrame
    tensor_stats: pd.DataFrame
    deployments: list[dict[str, Any]]  # db.deployments.results_of_runs: every format of every deployment


# Public entry points ----------------------------------------------------------------------
def export_csv(s: Sessions, run_ids: Sequence[int]) -> bytes:
    """A zip of runs.csv, metrics.csv, samples.csv and tensor_stats.csv (without histograms)."""
    import pandas as pd  # here, not at the top: the CLI imports this module and starts without pandas

    data = _load(s, run_ids, with_histograms=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", CSV_README)
        archive.writestr("runs.csv", pd.DataFrame([_run_row(run) for run in data.runs]).to_csv(index=False))
        # na_rep: a recorded NaN stays visible as "nan", never an empty cell that reads as "not recorded".
        for name, frame in (("metrics", data.metrics), ("samples", data.samples),
                            ("tensor_stats", data.tensor_stats)):
            archive.writestr(f"{name}.csv", frame.to_csv(index=False, na_rep="nan"))
        for name, (rows, columns) in _deployment_tables(data.deployments).items():
            archive.writestr(f"{name}.csv", pd.DataFrame(rows, columns=columns).to_csv(index=False, na_rep="nan"))
    return buffer.getvalue()


def export_json(s: Sessions, run_ids: Sequence[int]) -> bytes:
    """One strict JSON document of the runs with every metric point, sample and tensor statistic."""
    data = _load(s, run_ids, with_histograms=True)
    metrics, samples, stats = (_by_run(frame) for frame in (data.metrics, data.samples, data.tensor_stats))
    runs = []
    for run in data.runs:
        runs.append({
            **run,
            "metrics": _metric_series(metrics.get(run["id"])),
            "samples": _sample_series(samples.get(run["id"])),
            "tensor_stats": ([] if run["id"] not in stats
                             else stats[run["id"]].drop(columns="run_id").to_dict("records")),
            "deployments": [{key: _iso(value) if isinstance(value, datetime) else value
                             for key, value in result.items() if key != "run_id"}
                            for result in data.deployments if result["run_id"] == run["id"]],
        })
    document = {"arena_export": EXPORT_VERSION, "note": NON_FINITE_NOTE,
                "exported_at": _iso(datetime.now(timezone.utc).replace(tzinfo=None)), "runs": runs}
    # allow_nan=False: a non-finite value _finite missed fails here instead of writing invalid JSON.
    return json.dumps(finite(document), allow_nan=False).encode("utf-8")


def export_tensorboard(s: Sessions, run_ids: Sequence[int]) -> bytes:
    """A zip with one TensorBoard log directory per run: scalars, samples, histograms and the spec as text."""
    data = _load(s, run_ids, with_histograms=True)
    metrics, samples, stats = (_by_run(frame) for frame in (data.metrics, data.samples, data.tensor_stats))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for run in data.runs:
            run_metrics = metrics.get(run["id"], data.metrics.iloc[:0])
            start = _start_time(run, run_metrics)
            events = _event_file(run, start, run_metrics, samples.get(run["id"]), stats.get(run["id"]))
            archive.writestr(f"{tensorboard_dirname(run)}/events.out.tfevents.{int(start):010d}.arena", events)
    return buffer.getvalue()


EXPORTERS = {"csv": export_csv, "json": export_json, "tensorboard": export_tensorboard}


def write_export(s: Sessions, run_ids: Sequence[int], fmt: str, out_path: Union[str, Path],
                 overwrite: bool = False) -> Path:
    """Export the runs in a format to a file (into a directory: under export_filename); returns the file.

    Never writes over the database `s` reads, nor any SQLite database; an existing file only with
    overwrite (outfile.OutputPathError, a ValueError, names it otherwise).
    """
    if fmt not in EXPORTERS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    path = Path(out_path).expanduser()
    if path.is_dir():
        path = path / export_filename(run_ids, fmt)
    databases = [database] if (database := _database_file(s)) is not None else []
    outfile.check_destination(path, databases, overwrite)  # before the export, which may take a while
    data = EXPORTERS[fmt](s, run_ids)  # checks the run ids before anything is written
    outfile.write(path, data, overwrite)
    return path


def export_filename(run_ids: Sequence[int], fmt: str) -> str:
    """A file name naming the runs, e.g. arena-runs-3-4.csv.zip."""
    if fmt not in FILE_SUFFIXES:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    ids = [str(run_id) for run_id in dict.fromkeys(run_ids)]
    named = "-".join(ids[:IDS_IN_FILE_NAME])
    if len(ids) > IDS_IN_FILE_NAME:
        named += f"-and-{len(ids) - IDS_IN_FILE_NAME}-more"
    return f"arena-runs-{named}{FILE_SUFFIXES[fmt]}"


def open_tensorboard_command(zip_path: Union[str, Path]) -> str:
    """The shell command that unpacks a TensorBoard export and shows every point of it."""
    zip_path = Path(zip_path)
    logdir = zip_path.with_name(zip_path.name.removesuffix(".zip").removesuffix(".tensorboard"))
    unzip, logdir = shlex.quote(str(zip_path)), shlex.quote(str(logdir))
    return f"unzip {unzip} -d {logdir} && tensorboard --logdir {logdir} {TENSORBOARD_SAMPLES_HINT}"


def tensorboard_dirname(run: Union[Run, dict[str, Any]]) -> str:
    """A run's directory in the TensorBoard export: run-<id>-<framework>-<model>."""
    fields = run if isinstance(run, dict) else {key: getattr(run, key) for key in ("id", "framework", "model")}
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"run-{fields['id']}-{fields['framework']}-{fields['model']}")


# Loading ----------------------------------------------------------------------------------
@contextmanager
def _session(s: Sessions) -> Iterator[Session]:
    """The caller's session as is, or one transaction of a sessionmaker."""
    if isinstance(s, Session):
        yield s
    else:
        with s.begin() as session:
            yield session


def _database_file(s: Sessions) -> Optional[Path]:
    """The SQLite file the sessions read, if they read one."""
    bind = s.get_bind() if isinstance(s, Session) else s.kw.get("bind")
    url = getattr(bind, "url", None)
    if url is None or url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def _checked_ids(run_ids: Sequence[int]) -> list[int]:
    ids: list[int] = []
    for run_id in run_ids:
        try:
            ids.append(operator.index(run_id))
        except TypeError:
            raise ValueError(f"run id {run_id!r} is not a whole number") from None
    if not ids:
        raise ValueError("no run ids given: name at least one run to export")
    return list(dict.fromkeys(ids))


def _load(s: Sessions, run_ids: Sequence[int], with_histograms: bool) -> _Loaded:
    """The runs (ValueError naming ids that do not exist) and all their points."""
    ids = _checked_ids(run_ids)
    with _session(s) as session:
        runs = {run_id: queries.get_run(session, run_id) for run_id in ids}
        missing = [str(run_id) for run_id, run in runs.items() if run is None]
        if missing:
            raise ValueError(f"run {missing[0]} does not exist" if len(missing) == 1
                             else f"runs {', '.join(missing)} do not exist")
        return _Loaded(
            runs=[_run_fields(run) for run in runs.values()],
            metrics=queries.metric_frame(session, ids),
            samples=queries.sample_frame(session, ids),
            tensor_stats=queries.tensor_stat_frame(session, ids, with_histograms=with_histograms),
            deployments=deployments.results_of_runs(session, ids),
        )


def _run_fields(run: Run) -> dict[str, Any]:
    """A run row as plain data (usable after its session has closed)."""
    return {
        "id": run.id, "name": run.name, "tags": list(run.tags or []), "notes": run.notes,
        "status": run.status, "reason": run.reason, "error": run.error,
        "framework": run.framework, "model": run.model, "dataset": run.dataset, "group_tag": run.group_tag,
        "created_at": _iso(run.created_at), "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
        "epoch": run.epoch, "total_epochs": run.total_epochs, "step": run.step, "total_steps": run.total_steps,
        "device": run.placed_device, "hostname": run.hostname,
        "spec": dict(run.spec or {}), "environment": run.environment or {}, "summary": run.summary or {},
    }


def _iso(moment: Optional[datetime]) -> Optional[str]:
    return None if moment is None else moment.isoformat() + "Z"  # the database holds naive UTC


def _by_run(frame: pd.DataFrame) -> dict[int, pd.DataFrame]:
    return {int(run_id): group for run_id, group in frame.groupby("run_id", sort=False)}


# CSV and JSON -----------------------------------------------------------------------------
def _run_row(run: dict[str, Any]) -> dict[str, Any]:
    row = {key: run[key] for key in ("id", "name", "framework", "model", "dataset", "status", "reason")}
    row.update(group=run["group_tag"], tags=",".join(run["tags"]), notes=run["notes"],
               created_at=run["created_at"], started_at=run["started_at"], finished_at=run["finished_at"])
    return {**row, **_flatten(run["spec"], "spec")}


_DEPLOYMENT_FIELDS = ["run_id", "deployment_id", "framework", "format", "status", "size_bytes", "export_s"]
_DEPLOYMENT_COLUMNS = {
    "deployments": [*_DEPLOYMENT_FIELDS, "threads", "runtime", "runtime_version", "import_s", "load_s", "first_call_s",
                    "max_abs_diff", "tolerance", "accuracy_trained", "accuracy_exported", "peak_rss_bytes", "error"],
    "deployment_latency": [*_DEPLOYMENT_FIELDS, "batch", "calls", "p50_ms", "p95_ms", "p99_ms", "mean_ms",
                           "samples_per_s"],
    "deployment_serving": [*_DEPLOYMENT_FIELDS, "batching", "concurrency", "threads", "p50_ms", "p95_ms", "p99_ms",
                           "requests_per_s", "completed", "errors"],
}


def _deployment_tables(results: list[dict[str, Any]]) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
    """The deployments' figures as three flat tables: name -> (rows, columns); written with their header when empty."""
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in _DEPLOYMENT_COLUMNS}
    for result in results:
        key = {name: result[name] for name in _DEPLOYMENT_FIELDS}
        figures = result["figures"] or {}
        parity = figures.get("parity") or {}
        tables["deployments"].append({
            **key, "threads": figures.get("threads", (result["job_settings"] or {}).get("threads")),
            "runtime": figures.get("runtime"), "runtime_version": figures.get("runtime_version"),
            "import_s": figures.get("import_s"), "load_s": figures.get("load_s"),
            "first_call_s": figures.get("first_call_s"), "max_abs_diff": parity.get("max_abs_diff"),
            "tolerance": parity.get("tolerance"), "accuracy_trained": parity.get("accuracy_reference"),
            "accuracy_exported": parity.get("accuracy_artifact"), "peak_rss_bytes": figures.get("peak_rss_bytes"),
            "error": (result["error"] or "").strip().splitlines()[-1] if result["error"] else None})
        for point in figures.get("latency") or []:
            tables["deployment_latency"].append({**key, **{k: point.get(k) for k in _DEPLOYMENT_COLUMNS[
                "deployment_latency"][len(_DEPLOYMENT_FIELDS):]}})
        for served in result["serving"] or []:
            tables["deployment_serving"].append({**key, **{k: served.get(k) for k in _DEPLOYMENT_COLUMNS[
                "deployment_serving"][len(_DEPLOYMENT_FIELDS):]}})
    return {name: (rows, _DEPLOYMENT_COLUMNS[name]) for name, rows in tables.items()}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts as dotted keys; lists as JSON text, so one cell holds one value."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat
    if isinstance(value, (list, tuple)):
        return {prefix: json.dumps(finite(list(value)))}
    return {prefix: value}


def _metric_series(frame: Optional[pd.DataFrame]) -> dict[str, dict[str, list]]:
    if frame is None:
        return {}
    return {str(name): {column: group[column].tolist() for column in ("step", "epoch", "wall_time", "value")}
            for name, group in frame.groupby("name", sort=False)}


def _sample_series(frame: Optional[pd.DataFrame]) -> dict[str, dict[str, dict[str, Any]]]:
    series: dict[str, dict[str, dict[str, Any]]] = {}
    if frame is None:
        return series
    for (source, name), group in frame.groupby(["source", "name"], sort=False):
        series.setdefault(str(source), {})[str(name)] = {
            "unit": group["unit"].iloc[0], "time": group["time"].tolist(), "value": group["value"].tolist()}
    return series


# TensorBoard ------------------------------------------------------------------------------
def _start_time(run: dict[str, Any], metrics: pd.DataFrame) -> float:
    """Unix seconds the run started (its first point when it never started)."""
    for key in ("started_at", "created_at"):
        if run[key]:
            return datetime.fromisoformat(run[key]).timestamp()  # "...Z": UTC
    return float(metrics["wall_time"].min()) if not metrics.empty else 0.0


def _event_file(run: dict[str, Any], start: float, metrics: pd.DataFrame, samples: Optional[pd.DataFrame],
                stats: Optional[pd.DataFrame]) -> bytes:
    """One run's events in TensorBoard's record format (what `tensorboard --logdir` reads)."""
    # Imported here: only this format needs tensorboard. Its RecordWriter and protos never import
    # tensorflow (its file writer would, through tf.io.gfile), so the dashboard stays framework-free.
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    Value = summary_pb2.Summary.Value

    def write(wall_time: float, step: int, value: Any) -> None:
        event = event_pb2.Event(wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=[value]))
        writer.write(event.SerializeToString())

    writer.write(event_pb2.Event(wall_time=start, file_version=EVENT_FILE_VERSION).SerializeToString())
    write(start, 0, _text_value(summary_pb2, "spec", _spec_markdown(run["spec"]), "the run's full spec"))
    # Scalars are float32 in TensorBoard (as tf.summary.scalar writes them); CSV and JSON keep float64.
    for name, group in metrics.groupby("name", sort=False):
        for step, wall_time, value in zip(group["step"].tolist(), group["wall_time"].tolist(),
                                          group["value"].tolist()):
            write(wall_time, step, Value(tag=name, simple_value=_float(value)))
    if samples is not None:
        # step = the sample's index in its series: samples come at their own rate, not per step;
        # wall_time is the sample's time, so TensorBoard's "wall"/"relative" axes line them up with training.
        for (source, name), group in samples.groupby(["source", "name"], sort=False):
            prefix = "memory" if group["unit"].iloc[0] == SAMPLE_MEMORY_UNIT else "system"
            for index, (moment, value) in enumerate(zip(group["time"].tolist(), group["value"].tolist())):
                write(moment, index, Value(tag=f"{prefix}/{source}/{name}", simple_value=_float(value)))
    if stats is not None:
        step_times = metrics.groupby("step")["wall_time"].max().sort_index()
        for row in stats.to_dict("records"):
            if isinstance(row["histogram"], dict) and row["histogram"].get("counts"):  # none: nothing was finite
                step = int(row["step"])
                histogram = _histogram(summary_pb2, row)
                write(_time_at_step(step_times, step, start), step, Value(tag=f"{row['kind']}/{row['layer']}",
                                                                          histo=histogram))
    return buffer.getvalue()


def _float(value: Any) -> float:
    # A protobuf field given None stays unset and reads back as 0.0; a recorded NaN must stay NaN.
    return math.nan if value is None else float(value)


def _time_at_step(step_times: pd.Series, step: int, default: float) -> float:
    """Wall time of the last metric point at or before a step (tensor statistics carry no time)."""
    position = int(np.searchsorted(step_times.index.to_numpy(), step, side="right"))
    return float(step_times.iloc[position - 1]) if position else default


def _histogram(summary_pb2: Any, row: dict[str, Any]) -> Any:
    """A HistogramProto of a stored histogram: {"edges": [b0..bN], "counts": [c1..cN]} of the finite values.

    The statistics are of the same finite values (engine/layer_stats.py), so sum and sum of squares
    follow from mean and std; where one was not stored, from the bucket centres.
    """
    edges, counts = row["histogram"]["edges"], row["histogram"]["counts"]
    num = float(sum(counts))
    low, high, mean, std = (_finite_or(row[key], None) for key in ("min", "max", "mean", "std"))
    if mean is not None and std is not None:
        total, squares = mean * num, (std * std + mean * mean) * num
    else:
        centres = [(left + right) / 2 for left, right in zip(edges[:-1], edges[1:])]
        total = sum(c * n for c, n in zip(centres, counts))
        squares = sum(c * c * n for c, n in zip(centres, counts))
    return summary_pb2.HistogramProto(min=_finite_or(low, edges[0]), max=_finite_or(high, edges[-1]), num=num,
                                      sum=total, sum_squares=squares, bucket_limit=edges[1:], bucket=counts)


def _finite_or(value: Any, default: Any) -> Any:
    return float(value) if value is not None and math.isfinite(value) else default


def _text_value(summary_pb2: Any, tag: str, markdown: str, description: str) -> Any:
    """A text summary TensorBoard's Text tab renders as markdown."""
    from tensorboard.compat.proto import tensor_pb2, types_pb2
    from tensorboard.plugins.text.metadata import create_summary_metadata

    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[markdown.encode("utf-8")])
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=create_summary_metadata(tag, description))


def _spec_markdown(spec: dict[str, Any]) -> str:
    rows = [f"| {key[len('spec.'):]} | {value} |" for key, value in _flatten(spec, "spec").items()]
    return "\n".join(["| setting | value |", "| --- | --- |", *rows])
