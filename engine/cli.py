"""`python -m engine {run,runs,cancel,models,scheduler,export,trace,parity,download}`: Arena from the command line, through the same runner path."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from sqlalchemy.exc import DBAPIError

from analysis.machine_load import busy_machine
from db import queries
from db.errors import database_error
from db.models import ACTIVE_STATUSES, FINISHED
from db.session import make_sessionmaker, resolve_db_url
from db.urls import DatabaseURLError
from engine import PROJECT_ROOT, child_env, datafiles, devices, specfile
from engine.augment import AUGMENTATIONS
from engine.catalog import (
    DATASETS, FRAMEWORKS, LAYOUTS, MAX_LOADER_WORKERS, MODELS, MODES, OPTIMIZERS, PIPELINES, PRECISIONS,
    framework_label,
)
from engine.executors import LOCAL, RAY, executor_name, get_executor
from engine.executors.local import cpu_slots, runs_per_gpu
from engine.export import FORMATS as EXPORT_FORMATS, open_tensorboard_command, write_export
from engine.launch import default_url_for, queue_runs, reap
from engine.launch import ALREADY_ENDED, CANCEL_GRACE_S, CANCEL_REQUESTED, cancel_runs
from engine.scheduler import LEASE_NAME, NOT_SCHEDULING, Scheduler, scheduling_enabled, wake
from engine.matrix import MAX_MATRIX_RUNS, expand, parse_seeds, with_tf_strategy
from engine.run_ids import run_id_argument
from engine.spec import MAX_WORKERS, TF_STRATEGIES, RunSpec, SpecError
from engine.traces import viewer_hint, write_trace

POLL_INTERVAL_S = 0.5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Arena: PyTorch vs TensorFlow, run for run.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="train a run, or a matrix of runs as one group, and wait (exit 0 when all finished)",
        description="Several frameworks, modes, precisions, seeds or worker counts queue every combination as one "
                    "group. The database's scheduler (this command's, or a dashboard's if one is open) places each "
                    "run on a free GPU or the CPU (ARENA_RUNS_PER_GPU, ARENA_CPU_SLOTS); Ctrl-C stops them.")
    all_modes = sorted({m for modes in MODES.values() for m in modes})
    # Required unless --spec names them (build_specs says which is missing).
    run.add_argument("--framework", nargs="+", help=f"one or more of {', '.join(FRAMEWORKS)}, or 'both'")
    run.add_argument("--model", help=f"one of {', '.join(MODELS)}")
    run.add_argument("--dataset", help=f"one of {', '.join(DATASETS)}")
    run.add_argument("--spec", metavar="FILE",
                     help="one run from a .json or .toml file of spec fields (framework, model, dataset, epochs, ...; "
                          "a run's stored spec is one) instead of the flags; fields left out take the model's defaults")
    run.add_argument("--epochs", type=int, help="default: the model's (see `models`)")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--lr", type=float)
    run.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZERS)}")
    run.add_argument("--seed", type=int, help="one seed (default 0); see --seeds for several")
    run.add_argument("--seeds", help="several seeds as one group: '0-4' or '0,3,7'")
    run.add_argument("--mode", nargs="+", help=f"execution modes: {', '.join(all_modes)}; each applies to the "
                                                f"frameworks that have it, or name one: torch:eager "
                                                f"(default: each framework's first of "
                                                + "; ".join(f"{fw} {'|'.join(m)}" for fw, m in MODES.items()) + ")")
    run.add_argument("--precision", nargs="+", help=f"{' | '.join(PRECISIONS)} (default fp32)")
    run.add_argument("--tf32", action="store_true", help="allow TF32 on Ampere+ GPUs in both frameworks (default off)")
    run.add_argument("--layout", help=f"conv models: {' | '.join(LAYOUTS)} (default channels_last)")
    run.add_argument("--deterministic", action="store_true", help="deterministic algorithms / op determinism")
    run.add_argument("--framework-init", action="store_true",
                     help="each framework's own initialisers instead of one shared set of initial weights")
    run.add_argument("--warmup-steps", type=int, help="steps excluded from throughput and step times (default 10)")
    run.add_argument("--target-accuracy", type=float, help="time the first epoch reaching this test accuracy (0: off)")
    run.add_argument("--inference-iters", type=int, help="timed passes per batch size after training (0 skips)")
    run.add_argument("--device", help="auto (a free GPU, else the CPU) | cpu | cuda:N to pin one GPU (default auto)")
    run.add_argument("--sample-hz", type=float, help="memory/utilisation samples per second (default 10; 0 = off)")
    run.add_argument("--tf-memory-growth", choices=("on", "off"),
                     help="TensorFlow: grow GPU memory as needed (on, default) or reserve nearly all of it (off)")
    run.add_argument("--on-divergence", choices=("stop", "continue"),
                     help="a NaN/inf loss ends the run as diverged (stop, default) or is noted and training goes on")
    run.add_argument("--layer-stats", choices=("on", "off"),
                     help="weight and gradient statistics per layer at each epoch's end (on, default)")
    run.add_argument("--histogram-bins", type=int, help="bins of each layer's weight/gradient histogram (default 30)")
    run.add_argument("--step-timing", choices=("auto", "every_step", "windows"),
                     help="sync every step, or only at the ends of windows of steps (default auto: windows on GPUs)")
    run.add_argument("--calibration-steps", type=int,
                     help="steps after training split into data/copy/forward/backward/optimizer phases (default 20)")
    run.add_argument("--profile-steps", type=int, help="steps profiled operator by operator after training (default 5)")
    run.add_argument("--last-batch", choices=("drop", "keep"),
                     help="train on each epoch's last, smaller batch too (keep: a second shape) (default drop)")
    run.add_argument("--variable-length", action="store_true", default=None,
                     help="lstm/transformer: every batch its own sequence length (many shapes: retraces show)")
    run.add_argument("--keep-weights", choices=("on", "off"),
                     help="keep the final weights with the run, for `deploy` (on, default)")
    run.add_argument("--workers", type=int, nargs="+", metavar="N",
                     help=f"data-parallel worker processes per run, 1..{MAX_WORKERS} (default 1): PyTorch DDP, "
                          "TensorFlow MultiWorkerMirroredStrategy; --batch-size stays the global batch, split evenly. "
                          "Several counts (--workers 1 2 4) queue a scaling study as one group")
    run.add_argument("--tf-strategy", choices=TF_STRATEGIES,
                     help="TensorFlow with 2 or more workers: one process per worker (multi_worker, default: "
                          "MultiWorkerMirroredStrategy) or one process holding every worker's device (mirrored: "
                          "MirroredStrategy; without GPUs, logical CPU devices: a functional check)")
    run.add_argument("--sync-batchnorm", action="store_true", default=None,
                     help="with several workers, batch norm statistics over the global batch (SyncBatchNorm)")
    run.add_argument("--max-steps-per-epoch", type=int)
    run.add_argument("--noise", type=float, help="powerlaw: std of Gaussian noise on targets")
    run.add_argument("--synthetic-shape", help="synthetic datasets: '32x32x3' (images) or '64' (sequence length)")
    run.add_argument("--synthetic-classes", type=int)
    run.add_argument("--synthetic-size", type=int, help="synthetic datasets: training samples")
    run.add_argument("--pipeline", choices=PIPELINES,
                     help="where batches come from: arrays (default: the same numpy arrays feed both frameworks, "
                          "only the step differs) or native (PyTorch DataLoader against tf.data, the same samples "
                          "in the same order; needed by --mode fit)")
    run.add_argument("--loader-workers", type=int, metavar="N",
                     help=f"--pipeline native: DataLoader worker processes = tf.data parallel map calls and threads, "
                          f"0..{MAX_LOADER_WORKERS} (default 2)")
    run.add_argument("--augment", metavar="NAMES",
                     help=f"image datasets: augmentations applied to training batches, any of "
                          f"{','.join(AUGMENTATIONS)} joined by ',' (default none), seeded from the run's seed")
    _common(run)

    runs = sub.add_parser("runs", help="list stored runs with their final metrics")
    runs.add_argument("--limit", type=run_id_argument, default=None, help="show only the N newest runs")
    _common(runs)

    cancel = sub.add_parser(
        "cancel", help="cancel runs, keeping every point they recorded (exit 0 once each is cancelled or had ended)",
        description=f"A queued run leaves the queue. A running run's runner on this machine gets SIGTERM with every "
                    f"process it started, SIGKILL after {CANCEL_GRACE_S:g} s; a runner on another machine stops at "
                    f"its next heartbeat. A run that had already ended stays as it was (exit 0); an unknown run id "
                    f"exits 2 and cancels nothing.")
    cancel.add_argument("run_ids", nargs="+", type=run_id_argument, metavar="RUN_ID", help="as `runs` lists them")
    _common(cancel)

    models = sub.add_parser("models", help="models and datasets, with parameter counts per framework")
    _common(models)

    scheduler = sub.add_parser(
        "scheduler", help="place queued runs on this machine's devices until stopped (no dashboard needed)",
        description="Holds the database's scheduler lease while it runs (one scheduler per database); "
                    "runs it started go on after it stops, and the next scheduler picks the queue up.")
    scheduler.add_argument("--interval", type=_interval_s, default=1.0,
                           help=f"seconds between passes (default 1, at most {MAX_INTERVAL_S:g})")
    _common(scheduler)

    export = sub.add_parser(
        "export", help="write runs with every recorded point (no downsampling) as CSV, JSON or TensorBoard files",
        description="csv: a zip of runs.csv, metrics.csv, samples.csv, tensor_stats.csv; json: one document; "
                    "tensorboard: a zip with one log directory per run (unzip it, then tensorboard --logdir).")
    export.add_argument("run_ids", nargs="+", type=run_id_argument, metavar="RUN_ID", help="as `runs` lists them")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("--out", required=True,
                        help="file to write, or a directory to write it into (named like arena-runs-3-4.csv.zip); "
                             "an existing file is replaced only with --force, and a database never")
    export.add_argument("--force", "--overwrite", action="store_true", dest="force",
                        help="replace the --out file if it exists (never an SQLite database)")
    _common(export)

    trace = sub.add_parser(
        "trace", help="write a run's stored profiler trace to a file (torch: Chrome trace JSON; TF: .xplane.pb)",
        description="Each run profiles --profile-steps steps after training and keeps the trace in the database. "
                    "FILE ending in .gz gets it gzip-compressed as stored; any other name gets it as the viewer "
                    "reads it (Perfetto or chrome://tracing for torch, TensorBoard's profile plugin for TensorFlow).")
    trace.add_argument("run_id", type=run_id_argument, metavar="RUN_ID", help="as `runs` lists it")
    trace.add_argument("--out", required=True, metavar="FILE",
                       help="file to write, or a directory to write it into (named like "
                            "arena-run-3-torch-trace.json.gz); an existing file is replaced only with --force, "
                            "and a database never")
    trace.add_argument("--force", "--overwrite", action="store_true", dest="force",
                       help="replace the --out file if it exists (never an SQLite database)")
    _common(trace)

    # Their own parsers live with their code; listed here so `--help` shows them.
    for name, text in (("parity", "same weights, one batch, both frameworks: max |difference| of outputs and "
                                  "gradients"),
                       ("download", "fetch a file dataset (mnist, fashion_mnist, cifar10) into the data directory"),
                       ("deploy", "export finished runs' trained models (TorchScript, torch.export, AOTInductor, ONNX, "
                                  "SavedModel, LiteRT), check them equal, time loading and inference, serve them")):
        delegated = sub.add_parser(name, help=text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


MAX_INTERVAL_S = 3600.0  # a scheduler that waits longer between passes places nothing anyone waits for


def _interval_s(text: str) -> float:
    """argparse type for --interval: seconds, finite and in (0, MAX_INTERVAL_S]; time.sleep fails on the rest."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value <= MAX_INTERVAL_S):  # also false for NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, {MAX_INTERVAL_S:g}]")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="SQLAlchemy URL (default: ARENA_DB_URL, else the embedded SQLite file)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line on stdout")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "parity":
        from engine import parity
        return parity.main(argv[1:])
    if argv and argv[0] == "download":
        from engine import download
        return download.main(argv[1:])
    if argv and argv[0] == "deploy":
        from engine.deploy import cli as deploy_cli
        return deploy_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except DatabaseURLError as exc:  # named before anything connected or was created
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:  # unreachable, refused, damaged: which database and why, not a traceback
        print(f"error: the database cannot be used: {database_error(exc, resolve_db_url(getattr(args, 'db', None)))}. "
              f"Check that it is reachable (a server running, a file on a local disk), or give --db another URL.",
              file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return cmd_run(args)
    if args.command == "cancel":
        return cmd_cancel(args)
    if args.command == "runs":
        return cmd_runs(args)
    if args.command == "scheduler":
        return cmd_scheduler(args)
    if args.command == "export":
        return cmd_export(args)
    if args.command == "trace":
        return cmd_trace(args)
    return cmd_models(args)


def build_specs(args: argparse.Namespace) -> list[RunSpec]:
    """The run's spec, or the matrix's specs; raises SpecError (or SpecFileError) naming a bad value."""
    if args.spec is not None:
        return [_spec_from_file(args)]
    absent = [flag for flag in ("framework", "model", "dataset") if getattr(args, flag) is None]
    if absent:
        raise ValueError(f"give {', '.join(f'--{flag}' for flag in absent)} (framework, model and dataset "
                         f"name a run), or a spec file with --spec FILE")
    if args.seed is not None and args.seeds is not None:
        raise SpecError("seeds", args.seeds, "give --seed or --seeds, not both")
    frameworks = list(FRAMEWORKS) if args.framework == ["both"] else args.framework
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed if args.seed is not None else 0]
    base = dict(
        model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, device=args.device, max_steps_per_epoch=args.max_steps_per_epoch,
        noise=args.noise, tf32=args.tf32, layout=args.layout, deterministic=args.deterministic,
        same_init=not args.framework_init, warmup_steps=args.warmup_steps, target_accuracy=args.target_accuracy,
        inference_iters=args.inference_iters, synthetic_shape=args.synthetic_shape,
        synthetic_classes=args.synthetic_classes, synthetic_size=args.synthetic_size, sample_hz=args.sample_hz,
        tf_memory_growth=None if args.tf_memory_growth is None else args.tf_memory_growth == "on",
        on_divergence=args.on_divergence,
        layer_stats=None if args.layer_stats is None else args.layer_stats == "on", histogram_bins=args.histogram_bins,
        step_timing=args.step_timing, calibration_steps=args.calibration_steps, profile_steps=args.profile_steps,
        last_batch=args.last_batch, variable_length=args.variable_length,
        keep_weights=None if args.keep_weights is None else args.keep_weights == "on",
        sync_batchnorm=args.sync_batchnorm, pipeline=args.pipeline, loader_workers=args.loader_workers,
        augment=args.augment,
    )
    if args.loader_workers is not None and args.pipeline != "native":
        raise SpecError("loader_workers", args.loader_workers, "loader workers are the native pipeline's; add "
                                                               "--pipeline native")
    counts = args.workers or [1]
    if len(set(counts)) != len(counts):
        raise SpecError("workers", counts, "a worker count is listed twice")
    # expand knows no workers axis: one call per count, framework-major as expand orders the rest.
    per_count = [expand({**base, "workers": n}, frameworks, args.mode, args.precision or ["fp32"], seeds)
                 for n in counts]
    specs = with_tf_strategy([spec for framework in dict.fromkeys(frameworks) for specs in per_count for spec in specs
                              if spec.framework == framework], args.tf_strategy)
    if len(specs) > MAX_MATRIX_RUNS:
        raise SpecError("matrix", len(specs), f"at most {MAX_MATRIX_RUNS} runs at once")
    return specs


_NOT_SPEC_OPTIONS = ("command", "spec", "db", "json")  # run options a spec file does not replace


def _spec_from_file(args: argparse.Namespace) -> RunSpec:
    """The --spec file's run; flags that would set its fields too are an error rather than a silent winner."""
    given = [name for name, value in vars(args).items()
             if name not in _NOT_SPEC_OPTIONS and value is not None and value is not False]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"--spec {args.spec} defines the whole run; drop {flags} (set them in the file instead)")
    return specfile.load(args.spec)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        specs = build_specs(args)
        devices.check_runnable(specs)
        # Bad scheduler settings are reported before queuing.
        runs_per_gpu(), cpu_slots(), scheduling_enabled(), executor_name()
        absent = DATASETS[specs[0].dataset].kind == "file" and datafiles.missing_message(specs[0].dataset)
        if absent:
            raise SpecError("dataset", specs[0].dataset, absent)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = default_url_for(args.db)
    sessions = make_sessionmaker(url)
    run_ids = queue_runs(sessions, specs)
    for run_id, spec in zip(run_ids, specs):
        workers = f", {spec.workers} workers" if spec.workers > 1 else ""
        workers += " in one process (MirroredStrategy)" if spec.tf_strategy == "mirrored" else ""
        print(f"run {run_id}: {framework_label(spec.framework)} {spec.mode} {spec.precision} {spec.model} on "
              f"{spec.dataset}, seed {spec.seed}, {spec.epochs} epochs{workers} (db {url})", file=sys.stderr)
    scheduler = wake(sessions, url)
    if scheduler is None:
        print(f"  {NOT_SCHEDULING} runs", file=sys.stderr, flush=True)
    try:
        _follow(sessions, run_ids, scheduler)
    except KeyboardInterrupt:
        print("cancelling the runs (Ctrl-C) ...", file=sys.stderr, flush=True)
        cancel_runs(sessions, run_ids, via="Ctrl-C")
        _wait_until_ended(sessions, run_ids, timeout_s=60)
    finally:
        if scheduler is not None:
            scheduler.stop()  # the lease goes at once; a dashboard's scheduler takes the queue over
    reap(sessions)  # a runner killed before reporting still ends as failed, not running
    with sessions.begin() as s:
        runs = [queries.get_run(s, run_id) for run_id in run_ids]
        finals = queries.final_metrics(s, run_ids)
        records = [_run_record(run, finals[run.id]) for run in runs]
    for run, record in zip(runs, records):
        if run.status != FINISHED:
            print(f"run {run.id} {run.status}:\n{run.error or ''}", file=sys.stderr)
        else:
            print(f"run {run.id} finished: " + ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items()),
                  file=sys.stderr)
        for _, others, cores in busy_machine([run]):
            print(f"  busy machine: other processes kept {others:.1f} of {cores} cores busy on average while run "
                  f"{run.id} ran; its speed figures include that contention", file=sys.stderr)
    if args.json:
        print(json.dumps(records[0] if len(records) == 1 else {"group_tag": runs[0].group_tag, "runs": records}))
    return 0 if all(run.status == FINISHED for run in runs) else 1


def _follow(sessions, run_ids: list[int], scheduler) -> None:
    """Print progress lines to stderr until every run has ended."""
    last: dict[int, tuple] = {}
    said_who_schedules, said_error = False, None
    while True:
        time.sleep(POLL_INTERVAL_S)
        with sessions.begin() as s:
            runs = [queries.get_run(s, run_id) for run_id in run_ids]
            if not said_who_schedules and not (scheduler and scheduler.holds_lease):
                holder = queries.lease(s, LEASE_NAME)
                if holder is not None and holder.expires_at > queries.utcnow():
                    print(f"  the scheduler of process {holder.pid} on {holder.hostname} places these runs",
                          file=sys.stderr, flush=True)
                    said_who_schedules = True
            if scheduler and scheduler.last_error and scheduler.last_error != said_error:
                said_error = scheduler.last_error
                print(f"  scheduler: {said_error}", file=sys.stderr, flush=True)
            for run in runs:
                run_id = run.id
                state = (run.status, run.epoch, run.step, run.placed_device)
                if state == last.get(run_id):
                    continue
                metrics = queries.final_metrics(s, [run_id])[run_id]
                shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("train_loss", "test_accuracy", "phi_estimate")
                                  if k in metrics)
                prefix = f"  run {run_id} " if len(run_ids) > 1 else "  "
                where = f" on {run.placed_device}" if run.placed_device else ""
                print(f"{prefix}[{run.status}{where}] epoch {run.epoch}/{run.total_epochs}  step {run.step}"
                      + (f"/{run.total_steps}" if run.total_steps else "")
                      + (f"  {shown}" if shown else ""), file=sys.stderr, flush=True)
                last[run_id] = state
        if all(run.status not in ACTIVE_STATUSES for run in runs):
            return


def _wait_until_ended(sessions, run_ids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sessions.begin() as s:
            if all(queries.get_run(s, run_id).status not in ACTIVE_STATUSES for run_id in run_ids):
                return
        reap(sessions)
        time.sleep(POLL_INTERVAL_S)


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Place queued runs until SIGTERM or Ctrl-C, then give the lease up."""
    import signal

    url = default_url_for(args.db)
    try:
        name = executor_name()
    except ValueError as exc:  # named before the database is opened
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sessions = make_sessionmaker(url)
    scheduler = Scheduler(sessions, url, get_executor(name, sessions, url), interval_s=args.interval)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as Ctrl-C does
    where = {LOCAL: "on this machine", RAY: "on the Ray cluster"}.get(name, f"by the {name} executor")
    print(f"arena scheduler on {url} (pid {os.getpid()}), runs {where}; Ctrl-C stops it, runs go on",
          file=sys.stderr, flush=True)
    was_holding = None
    try:
        while True:
            for placement in scheduler.tick():
                print(f"{placement.kind} {placement.id} -> {placement.device}", file=sys.stderr, flush=True)
            if scheduler.holds_lease != was_holding:
                print("holding the lease: placing runs" if scheduler.holds_lease
                      else "another scheduler holds the lease: waiting", file=sys.stderr, flush=True)
                was_holding = scheduler.holds_lease
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        scheduler.stop()
    return 0


def _written(out: str, write) -> Optional[Path]:
    """The path write() wrote, or None after saying why not (a refused run or path, or the OS's error)."""
    try:
        return write()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: cannot write {out!r}: {exc.strerror or exc}", file=sys.stderr)
    return None


def cmd_export(args: argparse.Namespace) -> int:
    """Write the runs in one format; exit 2 naming a run that does not exist or a path that cannot be written."""
    sessions = make_sessionmaker(default_url_for(args.db))
    path = _written(args.out, lambda: write_export(sessions, args.run_ids, args.format, args.out,
                                                   overwrite=args.force))
    if path is None:
        return 2
    size = path.stat().st_size
    print(f"exported run{'s' if len(args.run_ids) > 1 else ''} {', '.join(map(str, args.run_ids))} as "
          f"{args.format} to {path} ({size:,} bytes)", file=sys.stderr)
    if args.format == "tensorboard":
        print(f"  open it: {open_tensorboard_command(path)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"path": str(path), "format": args.format, "run_ids": args.run_ids, "bytes": size}))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    """Write the run's stored trace; exit 2 naming a run that does not exist or has none, or an unwritable path."""
    sessions = make_sessionmaker(default_url_for(args.db))
    path = _written(args.out, lambda: write_trace(sessions, args.run_id, args.out, overwrite=args.force))
    if path is None:
        return 2
    with sessions.begin() as s:
        framework = queries.get_run(s, args.run_id).framework
    size = path.stat().st_size
    print(f"wrote run {args.run_id}'s trace to {path} ({size:,} bytes): {viewer_hint(framework)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"path": str(path), "run_id": args.run_id, "framework": framework, "bytes": size}))
    return 0


# Multi-worker figures a run's summary holds once it ran (issue 18), lifted to the top of its JSON record.
WORKER_SUMMARY_KEYS = ("strategy", "threads_per_worker", "ranks", "straggling")
# Input figures (issue 19): the pipeline as it ran, data wait, the loader alone and the ceiling; what fit ran with.
INPUT_SUMMARY_KEYS = ("input", "fit")


def _run_record(run, metrics: dict[str, float]) -> dict[str, Any]:
    summary = run.summary or {}
    return {
        "run_id": run.id, "status": run.status, "framework": run.framework, "model": run.model,
        "dataset": run.dataset, "mode": run.spec.get("mode"), "precision": run.spec.get("precision", "fp32"),
        "seed": run.spec.get("seed"), "group_tag": run.group_tag, "summary": summary, "epochs": f"{run.epoch}/{run.total_epochs}",
        "created_at": run.created_at.isoformat(timespec="seconds") + "Z", "metrics": metrics,
        "error": (run.error or "").strip().splitlines()[-1] if run.error else None,
        "reason": run.reason, "device": run.placed_device,
        # What ran once it has, else what was asked; runs stored before workers existed had one.
        "workers": summary.get("workers") or run.spec.get("workers", 1),
        **{key: summary[key] for key in WORKER_SUMMARY_KEYS if key in summary},
        "pipeline": run.spec.get("pipeline", "arrays"), "augment": list(run.spec.get("augment") or []),
        **{key: summary[key] for key in INPUT_SUMMARY_KEYS if key in summary},
    }


def cmd_runs(args: argparse.Namespace) -> int:
    sessions = make_sessionmaker(default_url_for(args.db))
    reap(sessions)
    with sessions.begin() as s:
        runs = queries.list_runs(s, limit=args.limit)
        finals = queries.final_metrics(s, [r.id for r in runs])
        records = [_run_record(r, finals[r.id]) for r in runs]
    if not records:
        print("no runs yet: start one with `python -m engine run --framework torch --model mlp --dataset digits`",
              file=sys.stderr)
    for r in records:
        shown = " ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if k != "epoch_time_s")
        print(f"{r['run_id']:>5}  {r['status']:<8}  {r['framework']:<10}  {r['mode'] or '':<8}  "
              f"{r['precision']:<5}  {r['model']:<11}  {r['dataset']:<16}  "
              f"{r['epochs']:>7}  {shown}", file=sys.stdout if not args.json else sys.stderr)
    if args.json:
        print(json.dumps(records))
    return 0


# How long `cancel` waits for a runner on another machine to stop (it reads the request at its next heartbeat).
REMOTE_CANCEL_WAIT_S = 5.0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel runs; exit 2 naming run ids that do not exist (nothing is cancelled then), else 0."""
    url = default_url_for(args.db)
    sessions = make_sessionmaker(url)
    run_ids = list(dict.fromkeys(args.run_ids))
    with sessions.begin() as s:
        unknown = [run_id for run_id in run_ids if queries.get_run(s, run_id) is None]
    if unknown:
        print(f"error: no run {', '.join(map(str, unknown))} in {url}; nothing was cancelled", file=sys.stderr)
        return 2
    outcomes = cancel_runs(sessions, run_ids, via="python -m engine cancel")
    asked = [run_id for run_id, outcome in outcomes.items() if outcome == CANCEL_REQUESTED]
    if asked:
        _wait_until_ended(sessions, asked, timeout_s=REMOTE_CANCEL_WAIT_S)
    with sessions.begin() as s:
        runs = {run_id: queries.get_run(s, run_id) for run_id in run_ids}
    records = []
    for run_id, outcome in outcomes.items():
        run = runs[run_id]
        status = run.status if run is not None else "deleted"
        if outcome == ALREADY_ENDED:
            said = f"had already ended: {status}"
        elif status in ACTIVE_STATUSES:
            said = f"asked to stop: its runner on {run.hostname} does at its next heartbeat"
        else:
            said = f"{status} at step {run.step}, every point kept" if run is not None else status
        print(f"run {run_id} {said}", file=sys.stderr)
        records.append({"run_id": run_id, "outcome": outcome, "status": status})
    if args.json:
        print(json.dumps(records))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    counts = {fw: _param_counts(fw) for fw in FRAMEWORKS}
    records = []
    for model in MODELS.values():
        for dataset in model.datasets:
            records.append({
                "model": model.name, "dataset": dataset, "description": model.description,
                "frameworks": list(FRAMEWORKS),
                "param_count": {fw: counts[fw][f"{model.name}/{dataset}"] for fw in FRAMEWORKS},
                "defaults": model.defaults,
            })
    out = sys.stderr if args.json else sys.stdout
    for r in records:
        per_fw = ", ".join(f"{framework_label(fw)} {n:,}" for fw, n in r["param_count"].items())
        print(f"{r['model']:<9} on {r['dataset']:<9} params: {per_fw}   ({r['description']})", file=out)
    if args.json:
        print(json.dumps({"models": records, "datasets": {
            name: {"task": d.task, "input_shape": list(d.input_shape), "train_size": d.train_size,
                   "test_size": d.test_size, "description": d.description} for name, d in DATASETS.items()}}))
    return 0


def _param_counts(framework: str) -> dict[str, int]:
    """Build every model in a child process of that framework and count its parameters."""
    result = subprocess.run(
        [sys.executable, "-m", "engine.backends.count", framework],
        cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"counting {framework} parameters failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
