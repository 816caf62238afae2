"""Tables: runs, their metric points, their system/memory samples and the files they produced."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Run lifecycle: queued -> running -> finished | failed | diverged | cancelled | lost. "active"
# statuses are the ones a reaper must watch so nothing stays "running" after its process is gone:
# a run whose runner stopped writing its heartbeat is "lost" (killed, machine gone), one a user
# stopped is "cancelled"; both keep every point they recorded.
QUEUED, RUNNING, FINISHED, FAILED, DIVERGED = "queued", "running", "finished", "failed", "diverged"
CANCELLED, LOST = "cancelled", "lost"
STATUSES = (QUEUED, RUNNING, FINISHED, FAILED, DIVERGED, CANCELLED, LOST)
ACTIVE_STATUSES = (QUEUED, RUNNING)
# Why a run failed, when Arena can tell (Run.reason): results worth comparing, not just errors.
OUT_OF_MEMORY, NON_FINITE_LOSS, ERROR = "out_of_memory", "non_finite_loss", "error"
RUN_NAME_MAX, TAG_MAX, TAGS_MAX = 200, 64, 32  # characters of a name, of one tag; tags per run
# Row ids of the tables every run keeps adding to (revision 0006). PostgreSQL's INTEGER is 32-bit:
# runners sampling at 10 Hz on a busy cluster pass 2^31 system samples within months. SQLite's
# INTEGER PRIMARY KEY is the 64-bit rowid already, and only that exact type makes it the rowid.
ROW_ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    framework: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(64))
    # Runs queued together (a "both frameworks" pair) share a group tag.
    group_tag: Mapped[Optional[str]] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    environment: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    summary: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[Optional[str]] = mapped_column(Text)
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs completed
    total_epochs: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)  # optimizer steps completed
    total_steps: Mapped[Optional[int]] = mapped_column(Integer)
    hostname: Mapped[Optional[str]] = mapped_column(String(255))
    pid: Mapped[Optional[int]] = mapped_column(Integer)
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    log_path: Mapped[Optional[str]] = mapped_column(Text)
    # Where the scheduler placed the run ("cpu", "cuda:1"; physical GPU index) once it started it; a multi-worker
    # run's devices in rank order, comma-separated ("cpu,cpu", "cuda:0,cuda:1").
    placed_device: Mapped[Optional[str]] = mapped_column(String(64))
    # Why a failed/diverged run ended: out_of_memory, non_finite_loss, error (None while active or finished).
    reason: Mapped[Optional[str]] = mapped_column(String(32))
    # What the user calls the run, and what they noted and tagged it with (Runs page, CLI).
    name: Mapped[Optional[str]] = mapped_column(String(RUN_NAME_MAX))
    notes: Mapped[Optional[str]] = mapped_column(Text)
    tags: Mapped[Optional[list[str]]] = mapped_column(JSON)
    # When someone asked the run to stop (Runs page, CLI): its runner, on any machine, sees it at
    # its next heartbeat and ends the run as cancelled.
    cancel_requested_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    # The Runs table's results, kept in step with the run's per-epoch points (db/run_results.py):
    # reading them from metric_points cost the table nearly a third of its time at 10,000 runs.
    # The last value of four metrics; last_values_recorded has a bit per metric (RECORDED_BITS
    # there) set once it has a point, because SQLite stores a NaN as NULL: a NULL with its bit set
    # is a NaN (a diverged loss), without it never recorded. NULL: no point of any of the four.
    last_test_accuracy: Mapped[Optional[float]] = mapped_column(Float)
    last_phi_estimate: Mapped[Optional[float]] = mapped_column(Float)
    last_phi_true: Mapped[Optional[float]] = mapped_column(Float)
    last_train_loss: Mapped[Optional[float]] = mapped_column(Float)
    last_values_recorded: Mapped[Optional[int]] = mapped_column(Integer)
    # The median samples/s over epochs, of the finite values only; NULL when there is none.
    median_samples_per_s: Mapped[Optional[float]] = mapped_column(Float)
    # Copies of spec fields the Runs table shows, written with the row (queries.create_run): reading
    # them out of the JSON spec cost SQLite a third of the table's query at 10,000 runs. NULL in rows
    # an older Arena wrote: readers fall back to the spec.
    mode: Mapped[Optional[str]] = mapped_column(String(16))
    precision: Mapped[Optional[str]] = mapped_column(String(16))
    seed: Mapped[Optional[int]] = mapped_column(Integer)

    metrics: Mapped[list["MetricPoint"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    samples: Mapped[list["SystemSample"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    tensor_stats: Mapped[list["TensorStat"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    metric_chunks: Mapped[list["MetricChunk"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    artifacts: Mapped[list["RunArtifact"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    deployments: Mapped[list["Deployment"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (Index("ix_runs_status", "status"), Index("ix_runs_created_at", "created_at"))


class MetricPoint(Base):
    """One value of one per-epoch metric (per-step series live in MetricChunk; older databases have some here)."""

    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    wall_time: Mapped[float] = mapped_column(Float)  # unix seconds
    # NULL means NaN: SQLite stores a NaN as NULL (PostgreSQL keeps it as NaN), and a diverged loss is a point
    # worth keeping. Readers take both as NaN.
    value: Mapped[Optional[float]] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="metrics")

    __table_args__ = (
        Index("ix_metric_points_run_name_step", "run_id", "name", "step"),
        # Covering: made (0004) for the Runs table's reads of every run's last values, which the run row
        # holds since 0008; no query needs it now, only writers pay for it.
        Index("ix_metric_points_name_run_step_value", "name", "run_id", "step", "value"),
    )


class MetricChunk(Base):
    """A run of consecutive per-step values of one metric, stored as packed arrays.

    A run records a value per optimizer step for several metrics: 100,000 steps are 100,000 rows
    as MetricPoints, which SQLite scans at about 2 M rows/s; as chunks (one per recorder flush)
    they are a few hundred rows of bytes that numpy reads in milliseconds. Every value is kept:
    a chunk is storage, not a summary. Arrays are little-endian: steps int64, epochs int32,
    wall_times and values float64 (NaN, a diverged loss, is stored as NaN).
    """

    __tablename__ = "metric_chunks"

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    first_step: Mapped[int] = mapped_column(Integer)
    last_step: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    steps: Mapped[bytes] = mapped_column(LargeBinary)
    epochs: Mapped[bytes] = mapped_column(LargeBinary)
    wall_times: Mapped[bytes] = mapped_column(LargeBinary)
    values: Mapped[bytes] = mapped_column(LargeBinary)

    run: Mapped[Run] = relationship(back_populates="metric_chunks")

    __table_args__ = (Index("ix_metric_chunks_run_name_step", "run_id", "name", "first_step"),)


class SystemSample(Base):
    """One reading of a host, framework-allocator or GPU gauge."""

    __tablename__ = "system_samples"

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    time: Mapped[float] = mapped_column(Float)  # unix seconds
    source: Mapped[str] = mapped_column(String(32))  # host | nvml | torch | tensorflow
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))

    run: Mapped[Run] = relationship(back_populates="samples")

    __table_args__ = (Index("ix_system_samples_run_source_name_time", "run_id", "source", "name", "time"),)


class TensorStat(Base):
    """Statistics of one layer's weights or gradients at the end of one epoch.

    Layers are named the same in both frameworks (the model's own layer names), so a layer of a
    PyTorch run can be set beside the same layer of a TensorFlow run.
    """

    __tablename__ = "tensor_stats"

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)  # optimizer steps done when the statistics were taken
    layer: Mapped[str] = mapped_column(String(128))  # e.g. "dense_1.kernel"
    kind: Mapped[str] = mapped_column(String(8))  # weight | grad
    numel: Mapped[int] = mapped_column(Integer)
    norm: Mapped[Optional[float]] = mapped_column(Float)  # L2; NULL when not finite
    mean: Mapped[Optional[float]] = mapped_column(Float)
    std: Mapped[Optional[float]] = mapped_column(Float)
    min: Mapped[Optional[float]] = mapped_column(Float)
    max: Mapped[Optional[float]] = mapped_column(Float)
    # {"edges": [b0, ..., bN], "counts": [c1, ..., cN]}: a histogram of the finite values.
    histogram: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)

    run: Mapped[Run] = relationship(back_populates="tensor_stats")

    __table_args__ = (Index("ix_tensor_stats_run_epoch", "run_id", "epoch"),)


AUGMENT_SAMPLES_KIND = "augment_samples"  # RunArtifact.kind: a few training images after augmentation (engine/pipeline.py)
WEIGHTS_KIND = "weights"  # RunArtifact.kind of a run's kept trained weights (engine/kept_weights.py)


class RunArtifact(Base):
    """A file a run produced, e.g. its profiler trace, kept gzip-compressed in the database.

    In the database, not on the runner's disk: the run may have trained on any machine of a
    cluster, and every dashboard must be able to offer it for download.
    """

    __tablename__ = "run_artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # "trace"
    name: Mapped[str] = mapped_column(String(255))  # the stored file's name, e.g. "trace.json.gz"
    media_type: Mapped[str] = mapped_column(String(64))  # of data, e.g. "application/gzip"
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # of the file before compression
    created_at: Mapped[datetime] = mapped_column(DateTime)

    run: Mapped[Run] = relationship(back_populates="artifacts")

    __table_args__ = (Index("ix_run_artifacts_run_kind", "run_id", "kind"),)


class SchedulerLease(Base):
    """The one row that says which scheduler acts on this database, until its lease expires.

    A scheduler renews its lease every tick; a crashed one simply stops renewing, and another
    takes over once expires_at has passed. No lock outlives its holder.
    """

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))  # a random id per scheduler instance
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Deployment(Base):
    """A deployment job (issue 17): one finished run's kept weights exported, checked and measured.

    Statuses as a run's: queued -> running -> finished | failed | cancelled | lost. One job per run,
    so a job is deleted with its run (ON DELETE CASCADE) like everything else a run produced.
    """

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    formats: Mapped[list] = mapped_column(JSON)  # format names of the run's framework, in engine/deploy/formats.py
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # threads, batch sizes, serving (engine/deploy/job.py)
    environment: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)  # host, CPU, runtimes' versions
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    steps_total: Mapped[int] = mapped_column(Integer, default=0)
    current: Mapped[Optional[str]] = mapped_column(String(255))  # what the job is doing now, for the screen
    error: Mapped[Optional[str]] = mapped_column(Text)
    hostname: Mapped[Optional[str]] = mapped_column(String(255))
    pid: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    heartbeat_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    cancel_requested_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    # Where the scheduler placed it ("cpu" on hostname, or a cluster's queue such as "ray:cpu"); None: not placed
    # yet. Last: revision 0012 added it, and a migrated table has the models' column order.
    placed_device: Mapped[Optional[str]] = mapped_column(String(32))

    run: Mapped[Run] = relationship(back_populates="deployments")
    results: Mapped[list["DeploymentResult"]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (Index("ix_deployments_run_id", "run_id"), Index("ix_deployments_status", "status"))


class DeploymentResult(Base):
    """One format of a deployment: its export, its parity with the trained model, its load and latency figures."""

    __tablename__ = "deployment_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    framework: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32))
    # ok | mismatch (outputs beyond the format's tolerance, kept and shown) | not_exportable | failed
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[Optional[str]] = mapped_column(Text)  # the reason, or the traceback
    export_s: Mapped[Optional[float]] = mapped_column(Float)
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    # engine/deploy/measure.py's document: load, first call, parity, latency per batch size, peak RSS, threads.
    figures: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    # Served over HTTP: one entry per (batching, concurrency) of engine/deploy/loadgen.py.
    serving: Mapped[Optional[list]] = mapped_column(JSON)
    artifact_name: Mapped[Optional[str]] = mapped_column(String(255))
    artifact: Mapped[Optional[bytes]] = mapped_column(LargeBinary)  # the file (a SavedModel directory zipped)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    deployment: Mapped[Deployment] = relationship(back_populates="results")

    __table_args__ = (Index("ix_deployment_results_deployment_id", "deployment_id"),)
