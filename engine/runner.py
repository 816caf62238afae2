"""`python -m engine.runner RUN_ID [--db URL]`: train one stored run in this process.

One run, one process, one framework. The run goes queued -> running -> finished | failed |
diverged | cancelled; a failure (exception, out of memory, SIGTERM, Ctrl-C) stores the traceback and
a reason and keeps every point recorded so far. A run someone asked to cancel (engine.launch.cancel_runs,
on any machine: the recorder reads the request at every heartbeat) stops the same way and ends
cancelled. A run a reader has already ended (lost while this runner was out of touch) stays as it
is: its outcome here only goes to the log. Normally the scheduler starts it, placed on a device.
"""
from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Callable, NoReturn, Optional

import psutil
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.errors import database_error
from db.models import CANCELLED, DIVERGED, FAILED, NON_FINITE_LOSS, OUT_OF_MEMORY, ERROR
from db.session import make_sessionmaker, resolve_db_url
from engine import distributed, environment, kept_weights
from engine.data import epoch_order, load_spec
from engine.monitor import EpochMeter, HostLoad, HostPeak, Monitor
from engine.nvml import Nvml
from engine.recorder import Recorder
from engine.spec import RunSpec


class Stopped(BaseException):
    """Raised in the main thread when the runner is asked to stop (SIGTERM, or a cancel request it read)."""


def _on_sigterm(signum, _frame):
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


# A cancelled runner stops at the main thread's next bytecode; one stuck longer in a native call
# (a long compile) is ended this long after the request by its recorder thread.
CANCEL_DEADLINE_S = 10.0
EXIT_CANCELLED = 128 + signal.SIGTERM  # as a shell reports a process SIGTERM ended


# Set by the executor for the process it starts (engine/executors/local.py placement_env, ray.py runner_env).
ENV_DEVICE = "ARENA_DEVICE"  # the device as this process sees it: "cpu" or "cuda:0"
ENV_PLACED_DEVICE = "ARENA_PLACED_DEVICE"  # the machine's name for it: "cpu" or "cuda:<NVML index>"
ENV_NVML_INDEX = "ARENA_NVML_INDEX"  # NVML ignores CUDA_VISIBLE_DEVICES: the physical index to watch


def execute(run_id: int, db_url: Optional[str] = None) -> int:
    """Claim and train one queued run; return the exit code (0 = finished, EXIT_CANCELLED, 2 = not queued)."""
    url = resolve_db_url(db_url)
    parsed = make_url(url)
    pid, hostname = os.getpid(), socket.gethostname()
    if parsed.get_backend_name() == "sqlite" and parsed.database and not os.path.exists(parsed.database):
        # A runner opens its run's database; making a new, empty one there would only hide the loss.
        print(f"run {run_id}: the database file {parsed.database} does not exist (moved or deleted since the run "
              f"was queued?); nothing to do", file=sys.stderr)
        return 3
    try:
        sessions = make_sessionmaker(url)
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            claimed = run is not None and queries.claim_run(s, run_id, pid, hostname)
            spec_dict = dict(run.spec) if run is not None else {}
    except Exception as exc:  # unreachable, read-only, full: which database and why, not a traceback
        print(f"run {run_id}: cannot claim the run in {database_error(exc, url)}", file=sys.stderr)
        return 3
    if not claimed:
        state = "does not exist" if run is None else f"is {run.status}, not queued"
        print(f"run {run_id} {state} in {parsed.render_as_string(hide_password=True)}; nothing to do",
              file=sys.stderr)
        return 2

    recorder = Recorder(sessions, run_id, on_cancel=_stop_when_cancelled(sessions, run_id)).start()
    instruments: Optional[Instruments] = None
    backend = None
    summary: dict = {}
    workers, children, quiet = distributed.SINGLE, [], None
    try:
        spec = RunSpec.from_dict(spec_dict)
        if spec.workers > 1 and spec.tf_strategy == "mirrored":  # one process, every worker's device: no ranks
            workers = distributed.hold_every_device(spec.workers)
        elif spec.workers > 1:  # rank 0 starts the others first: they load data and frameworks alongside it
            workers, children = distributed.start_workers(run_id, url, spec.workers)
            quiet = distributed.watch_workers(children, _fail_when_worker_lost(sessions, run_id, recorder))
        data = load_spec(spec)
        summary.update(data.info)
        from engine.backends import get_backend  # imports exactly one framework

        backend = get_backend(spec.framework, os.environ.get(ENV_DEVICE) or spec.device,
                              tf_memory_growth=spec.tf_memory_growth, threads=distributed.threads_from_env())
        backend.join(workers)
        instruments = start_instruments(spec, backend, recorder, pid, host_load=not workers.distributed)
        env = environment.capture(backend.describe(), instruments.nvml.snapshot() if instruments.nvml else None,
                                  instruments.nvml_status)
        env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu_index = instruments.gpu_index
        placed = os.environ.get(ENV_PLACED_DEVICE) or (f"cuda:{gpu_index}" if gpu_index is not None else "cpu")
        with sessions.begin() as s:
            queries.update_run(s, run_id, environment=env, placed_device=placed)

        from engine.loop import Diverged, train

        artifacts: list = []  # files training produced (the profiler's trace), stored with the run's end
        if spec.augment:  # a few images as the run's pipeline augments them, for the Compare page
            from engine.pipeline import augmentation_artifact

            artifacts.append(augmentation_artifact(spec, data, epoch_order(len(data.x_train), spec.seed, 1)))
        try:
            summary.update(train(spec, backend, data, recorder, instruments.meter, artifacts, workers))
        except Diverged as exc:
            summary["diverged_at_step"] = exc.step
            raise
        if workers.distributed:  # past the final barrier: every worker has written its points
            if quiet is not None:
                quiet()
            summary["threads_per_worker"] = distributed.threads_from_env() or backend.describe().get("intra_op_threads")
            recorder.flush()  # rank 0's own step times and samples, read back beside the others'
            with sessions.begin() as s:
                summary.update(distributed.rank_figures(s, run_id, workers.world, spec.warmup_steps,
                                                        spec.batch_size // workers.world, workers.hosts))
        if spec.keep_weights and "diverged_at_step" not in summary:  # trained weights, for deployment
            artifacts.append(kept_weights.artifact(backend.canonical_weights(), kept_weights.describe(spec, data, run_id)))
        _stop(instruments, recorder, summary)
        with sessions.begin() as s:
            for artifact in artifacts:  # with the run's end: its summary and its trace appear together
                queries.add_artifact(s, run_id, artifact.kind, artifact.name, artifact.media_type, artifact.data,
                                     artifact.size_bytes)
            if "diverged_at_step" in summary:  # on_divergence="continue": trained to the end, still diverged
                recorded = queries.fail_run(
                    s, run_id, f"the loss became non-finite at step {summary['diverged_at_step']}; "
                               f"training went on (on_divergence=continue)", summary,
                    reason=NON_FINITE_LOSS, status=DIVERGED)
            else:
                recorded = queries.finish_run(s, run_id, summary)
        if not recorded:
            _say_not_recorded(sessions, run_id, "diverged" if "diverged_at_step" in summary else "finished")
        return 1 if "diverged_at_step" in summary else 0
    except BaseException as exc:  # noqa: BLE001 - every way out must leave the run ended, not running
        _ignore_further_sigterms()
        error = "".join(traceback.format_exception(exc))
        if quiet is not None:
            quiet()
            lost = distributed.lost_ranks(children, wait=not isinstance(exc, (Stopped, KeyboardInterrupt)))
            if lost:  # the collective's own error below says less than which worker went
                error = "; ".join(lost) + ": a data-parallel run needs every worker\n" + error
        try:
            _stop(instruments, recorder, summary)
        except Exception as flush_exc:  # still mark the run failed, and say that points may be missing
            error += f"\n(could not write the last buffered points: {flush_exc})"
        status, reason = _outcome(exc, backend)
        print(error, file=sys.stderr, flush=True)  # first: the log keeps why even when the database takes nothing
        try:
            with sessions.begin() as s:
                # Asked to cancel: whatever stopped the run (Stopped, or a worker the canceller's SIGTERM ended) is that.
                cancelled = queries.cancel_requested(s, run_id) is not None
                if cancelled:
                    recorded = queries.end_cancelled(s, run_id, summary or None)
                else:
                    recorded = queries.fail_run(s, run_id, error, summary or None, reason=reason, status=status)
        except Exception as store_exc:  # a reader ends the run from this log once the database takes writes again
            print(f"run {run_id}: its end could not be stored either: {database_error(store_exc, url)}",
                  file=sys.stderr, flush=True)
            return 1
        if cancelled:
            print(f"run {run_id} cancelled", file=sys.stderr)
        if not recorded:
            _say_not_recorded(sessions, run_id, CANCELLED if cancelled else status)
        if cancelled:
            return EXIT_CANCELLED
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        if children:
            distributed.stop_workers(children)


def _fail_when_worker_lost(sessions: sessionmaker[Session], run_id: int,
                           recorder: Recorder) -> Callable[[int, int], None]:
    """What rank 0 does, from its watcher thread, when another worker dies: its main thread may wait in a
    collective for a long time, so this thread keeps the points, ends the run as failed and ends the processes."""
    def on_lost(rank: int, code: int) -> None:
        message = (f"worker rank {rank} {distributed.exit_words(code)} during training: a data-parallel run needs "
                   f"every worker, so the run stopped; its log above has that worker's output")
        print(f"run {run_id}: {message}", file=sys.stderr, flush=True)
        try:
            recorder.close()
        finally:
            try:
                with sessions.begin() as s:
                    queries.fail_run(s, run_id, message, {"recorded": recorder.counts()}, reason=ERROR)
            finally:
                _exit_now(1)
    return on_lost


def execute_worker(run_id: int, rank: int, db_url: Optional[str] = None) -> int:
    """Rank `rank` (>= 1) of a multi-worker run rank 0 started: train this worker's shard, record its own step
    times and memory, meet the others at the final barrier. Rank 0 records the run and ends it."""
    distributed.watch_parent(lambda: _exit_now(1))  # rank 0 gone: nobody will end the collectives
    url = resolve_db_url(db_url)
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        spec = RunSpec.from_dict(dict(queries.get_run(s, run_id).spec))
    workers = distributed.from_env()
    recorder = Recorder(sessions, run_id, rank=rank).start()
    monitor = None
    try:
        data = load_spec(spec)
        from engine.backends import get_backend

        backend = get_backend(spec.framework, os.environ.get(ENV_DEVICE) or spec.device,
                              tf_memory_growth=spec.tf_memory_growth, threads=distributed.threads_from_env())
        backend.join(workers)
        if spec.sample_hz > 0:
            monitor = Monitor(recorder.samples, os.getpid(), [(spec.framework, backend.memory_stats)],
                              interval_s=1.0 / spec.sample_hz).start()
        from engine.loop import train

        train(spec, backend, data, recorder, None, None, workers)
        if monitor is not None:
            monitor.stop()
        recorder.close()  # before the barrier: rank 0 reads every worker's points after it
        backend.barrier()
        return 0
    except BaseException:  # noqa: BLE001 - rank 0 sees the exit code and ends the run with this worker's rank
        print(f"run {run_id}, worker rank {rank}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            recorder.close()
        return 1


def _stop_when_cancelled(sessions: sessionmaker[Session], run_id: int) -> Callable[[], None]:
    """What the recorder calls from its thread once it reads a cancel request for the run."""
    def on_cancel() -> None:
        print(f"run {run_id}: cancel requested; stopping", file=sys.stderr, flush=True)
        _thread.interrupt_main(signal.SIGTERM)  # Stopped in the main thread, as on SIGTERM; execute() ends the run
        deadline = threading.Timer(CANCEL_DEADLINE_S, _end_unresponsive, (sessions, run_id))
        deadline.daemon = True  # a runner that ends in time exits without waiting for it
        deadline.start()
    return on_cancel


def _end_unresponsive(sessions: sessionmaker[Session], run_id: int) -> None:
    """The main thread did not stop in time: record the cancel, then end the processes it started and this one."""
    print(f"run {run_id}: still running {CANCEL_DEADLINE_S:g} s after the cancel request; ending the process",
          file=sys.stderr, flush=True)
    try:
        with sessions.begin() as s:
            queries.end_cancelled(s, run_id)
    finally:
        _exit_now(EXIT_CANCELLED)


def _exit_now(code: int) -> NoReturn:
    """End this process and every process it started at once, without the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()
    os._exit(code)


def _ignore_further_sigterms() -> None:
    """Let no second SIGTERM cut the run's final write short (a canceller's SIGKILL still ends a slow one)."""
    # A cancel brings two: the recorder's own stop and the canceller's signal.
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # installed by main(), in the main thread
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _say_not_recorded(sessions: sessionmaker[Session], run_id: int, outcome: str) -> None:
    """Log that the run had already ended (a reader found it lost, its heartbeat stale): it stays as it is."""
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        status = run.status if run is not None else "deleted"
    print(f"run {run_id} {outcome} here, but it was already {status}: an ended run is never rewritten, so "
          f"this outcome is not recorded (every point is)", file=sys.stderr, flush=True)


@dataclass
class Instruments:
    """What watches a run: the 10 Hz monitor thread, the per-epoch meter, NVML when there is a GPU, the host's load."""

    meter: EpochMeter
    monitor: Optional[Monitor]
    nvml: Optional[Nvml]
    nvml_status: str
    gpu_index: Optional[int]  # NVML index of the run's GPU
    load: Optional[HostLoad] = None  # None for a multi-worker run: its other ranks are the other processes

    def stop(self, summary: dict) -> None:
        """Stop sampling; note the cores other processes kept busy, and any gauge that failed, in the summary."""
        if self.monitor is not None:
            self.monitor.stop()
        others = self.load.others_busy_cores() if self.load is not None else None
        if others is not None:
            summary["others_busy_cores"] = others
            summary["host_cores"] = self.load.cores
        errors = (self.monitor.errors if self.monitor else []) + [
            f"nvml {call}: {message}" for call, message in (self.nvml.call_errors.items() if self.nvml else [])]
        if errors:
            summary["monitor_errors"] = errors
        if self.nvml is not None:
            self.nvml.shutdown()


def start_instruments(spec: RunSpec, backend, recorder: Recorder, pid: int, host_load: bool = True) -> Instruments:
    """Start sampling at spec.sample_hz (0 = off) the framework allocator, NVML and the host, into the recorder.

    host_load: also measure how busy other processes keep the machine's cores until stop().
    """
    nvml, nvml_status = Nvml.load()
    gpu_index = _nvml_index(backend)
    if gpu_index is None and nvml is not None:
        nvml.shutdown()  # a CPU run has no GPU to watch
        nvml = None
    probes = [(spec.framework, backend.memory_stats)]
    if nvml is not None:
        probes.append(("nvml", lambda: nvml.gpu_readings(gpu_index, pid)))
    monitor = None
    if spec.sample_hz > 0:
        monitor = Monitor(recorder.samples, pid, probes, interval_s=1.0 / spec.sample_hz).start()
    energy = (lambda: nvml.energy_j(gpu_index)) if nvml is not None else None
    load = HostLoad(pid).start() if host_load else None
    return Instruments(EpochMeter(backend, HostPeak(), energy), monitor, nvml, nvml_status, gpu_index, load)


def _nvml_index(backend) -> Optional[int]:
    """The NVML index of the run's GPU: the scheduler says which; a directly started runner uses its CUDA ordinal."""
    if backend.gpu_index is None:
        return None
    placed = os.environ.get(ENV_NVML_INDEX)
    return int(placed) if placed else backend.gpu_index


def _outcome(exc: BaseException, backend) -> tuple[str, str]:
    """(status, reason) for a run that ended with exc."""
    from engine.loop import Diverged
    from engine.backends import is_out_of_memory

    if isinstance(exc, Diverged):
        return DIVERGED, NON_FINITE_LOSS
    framework = backend.name if backend is not None else None
    return FAILED, OUT_OF_MEMORY if is_out_of_memory(exc, framework) else ERROR


def _stop(instruments: Optional[Instruments], recorder: Recorder, summary: dict) -> None:
    if instruments is not None:
        instruments.stop(summary)
    try:
        recorder.close()
    finally:
        summary["recorded"] = recorder.counts()  # produced and stored points per kind: what, if anything, was lost


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.runner", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", type=int)
    parser.add_argument("--db", help="SQLAlchemy URL (default: ARENA_DB_URL or the embedded SQLite file)")
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)  # set by rank 0 for the others
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.rank > 0:
        _exit_now(execute_worker(args.run_id, args.rank, args.db))  # no framework teardown to wait for
    code = execute(args.run_id, args.db)
    if code == EXIT_CANCELLED:
        # Recorded: go now. A framework's teardown takes most of a second, which a canceller waiting
        # out its 3 s deadline cannot spare; the workers it started go with it.
        _exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
