"""`python -m engine.deploy.job JOB_ID [--db URL]`: one deployment job, in this process and the ones it starts.

The job takes one finished run's kept weights (engine/kept_weights.py) and, one process each:
1. exports every asked format in a process of the run's framework (engine/deploy/export_worker.py);
2. loads and measures each artifact in a fresh process holding only its runtime (measure.py):
   load and first-call time, parity with the trained model on the test set, latency per batch size,
   peak memory;
3. with settings["serve"], serves each artifact over HTTP (serve.py, Ray Serve) and measures it under
   load (loadgen.py) at each concurrency, dynamic batching on and off.

Results are stored format by format as they come (a crash keeps what was done; a format that fails
keeps its traceback and the others go on), with each artifact's file for download. The scheduler
places a job on a machine no run is on (engine/executors/local.py); where a cluster may not (Ray),
the job waits while a run is active or an earlier job measures on its machine, so measurements
never share it. Cancel (jobs.cancel) is read between steps and while a child works: the child tree is
stopped and the job ends cancelled; a killed job is found lost by jobs.reap.
"""
from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from db.models import CANCELLED, FAILED, FINISHED
from db.session import make_sessionmaker, resolve_db_url
from engine import PROJECT_ROOT, child_env, environment, kept_weights
from engine.data import load_spec
from engine.deploy import formats, loadgen
from engine.deploy import export_worker
from engine.deploy.export_worker import OK
from engine.processes import DEPLOY_MODULE, stop_process_trees
from engine.spec import RunSpec

MISMATCH = "mismatch"  # outputs beyond the format's tolerance: stored and shown, never dropped
EXPORT_TIMEOUT_S = 1800.0  # AOTInductor compiles C++: minutes for a large model on 2 cores
MEASURE_TIMEOUT_S = 900.0
SERVE_START_TIMEOUT_S = 180.0
POLL_S = 0.5
WAIT_NOTE_EVERY_S = 5.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h

DEFAULT_SETTINGS = {
    "threads": 1,  # intra-op threads of every runtime; inter-op 1
    "batch_sizes": [1, 8, 32, 128],
    "min_time_s": 1.0,  # timed calls per batch size
    "serve": False,
    "concurrency": [1, 8, 32],
    "serve_duration_s": 5.0,
    "batching": [True, False],
    "max_batch": 32,
    "batch_wait_ms": 2.0,
}


class Cancelled(BaseException):
    """The job was asked to stop (cancel request, SIGTERM)."""


def settings_with_defaults(settings: Optional[dict]) -> dict:
    """DEFAULT_SETTINGS overridden by settings; unknown keys are an error naming them."""
    unknown = sorted(set(settings or {}) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown deployment setting {unknown[0]!r}: expected one of {', '.join(DEFAULT_SETTINGS)}")
    return {**DEFAULT_SETTINGS, **(settings or {})}


class _Job:
    def __init__(self, sessions: sessionmaker[Session], job_id: int):
        self.sessions, self.job_id = sessions, job_id
        self.done, self.total, self.current = 0, 0, "starting"
        self.children: list[subprocess.Popen] = []

    # -- progress, heartbeat and cancel ------------------------------------------------------------
    def step(self, current: str, advance: int = 0) -> None:
        self.done += advance
        self.current = current
        self.beat()

    def beat(self) -> None:
        with self.sessions.begin() as s:
            running = deployments.progress(s, self.job_id, self.done, self.total, self.current)
            asked = deployments.cancel_requested(s, self.job_id)
        if asked or not running:
            raise Cancelled("cancel requested" if asked else "the job was ended elsewhere")

    def wait(self, process: subprocess.Popen, timeout_s: float, what: str) -> int:
        """Wait for a child, beating and reading cancel requests; a child past timeout_s is stopped and fails."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return process.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                stop_process_trees([process.pid])
                raise TimeoutError(f"{what} took longer than {timeout_s:g} s and was stopped")
            self.beat()

    def start(self, args: list[str], log: Path, **kwargs) -> subprocess.Popen:
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, env=child_env(),
                                       stdin=subprocess.DEVNULL, stdout=kwargs.pop("stdout", out),
                                       stderr=out, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)
        self.children.append(process)
        return process

    def stop_children(self) -> None:
        alive = [p.pid for p in self.children if p.poll() is None]
        if alive:
            stop_process_trees(alive)

    # -- the steps -------------------------------------------------------------------------------
    def wait_for_machine(self) -> None:
        """Wait while a run is active or an earlier job measures on this machine: the figures are this job's alone."""
        while True:
            with self.sessions.begin() as s:
                runs, jobs = deployments.blockers(s, self.job_id, socket.gethostname())
            if not runs and not jobs:
                return
            waiting = [f"{runs} run{'s' * (runs != 1)} training" if runs else "",
                       f"{jobs} earlier deployment{'s' * (jobs != 1)} measuring" if jobs else ""]
            self.step("waiting for the machine: " + " and ".join(w for w in waiting if w))
            time.sleep(WAIT_NOTE_EVERY_S)

    def run(self, directory: Path) -> None:
        with self.sessions.begin() as s:
            job = deployments.get(s, self.job_id)
            run = queries.get_run(s, job.run_id)
            names, settings = list(job.formats), settings_with_defaults(job.settings)
            spec = RunSpec.from_dict(dict(run.spec))
            kept = kept_weights.find(s, run.id)
            if kept is None:
                raise RuntimeError(f"run {run.id} kept no weights (keep_weights was off, or they were deleted)")
            weights = queries.get_artifact(s, kept["id"]).data
        per_format = 1 + (len(settings["batching"]) if settings["serve"] else 0)
        self.total = 1 + len(names) * per_format
        self.step("loading the test set")
        data = load_spec(spec)
        meta = kept_weights.unpack(weights).meta
        export_worker.write_job(directory, spec.framework, spec.model, meta["input_shape"], meta["num_outputs"], names,
                                weights, data.x_test, data.y_test if data.task == "classification" else None)
        self.wait_for_machine()
        with self.sessions.begin() as s:
            deployments.set_environment(s, self.job_id, {**environment.capture({"device": "cpu"}, None, "not used"),
                                                         "threads": settings["threads"]})
        self.step(f"exporting {len(names)} format{'s' * (len(names) != 1)} in {spec.framework}")
        export = self.start(["-m", "engine.deploy.export_worker", str(directory)], directory / "export.log")
        code = self.wait(export, EXPORT_TIMEOUT_S, "the export")
        exported = json.loads((directory / "export.json").read_text()) if (directory / "export.json").exists() else {}
        if code != 0 and not exported:
            raise RuntimeError(f"the export process ended with code {code}:\n{_tail(directory / 'export.log')}")
        self.step("exported", advance=1)
        stored: list[tuple[int, str, str]] = []  # (result id, format, artifact path) of the measured ones
        for name in names:
            outcome = exported.get(name) or {"status": FAILED, "error": (
                f"the export process ended (code {code}) before this format:\n{_tail(directory / 'export.log')}")}
            self.step(f"measuring {formats.get(spec.framework, name).label}")
            result_id = self.measure_and_store(spec.framework, name, outcome, directory, settings)
            if result_id is not None:
                stored.append((result_id, name, outcome["path"]))
            self.step(f"measured {name}", advance=1)
        if settings["serve"]:
            for result_id, name, path in stored:
                self.serve_and_store(spec.framework, name, path, result_id, directory, settings)
        self.done = self.total  # formats that were not exported had nothing to serve
        self.step("done")

    def measure_and_store(self, framework: str, name: str, outcome: dict, directory: Path,
                          settings: dict) -> Optional[int]:
        """Store one format's result; the id when it was measured (and may be served)."""
        if outcome["status"] != OK:
            with self.sessions.begin() as s:
                deployments.add_result(s, self.job_id, framework, name, outcome["status"], error=outcome["error"],
                                       export_s=outcome.get("export_s"))
            return None
        out = directory / f"{name}.measure.json"
        measure = self.start(["-m", "engine.deploy.measure", "--framework", framework, "--format", name,
                              "--artifact", outcome["path"], "--inputs", str(directory / "inputs.npz"),
                              "--threads", str(settings["threads"]),
                              "--batches", ",".join(str(b) for b in settings["batch_sizes"]),
                              "--min-time", str(settings["min_time_s"]), "--out", str(out)],
                             directory / f"{name}.measure.log")
        error, figures, status = None, None, FAILED
        try:
            code = self.wait(measure, MEASURE_TIMEOUT_S, f"measuring {name}")
            if code == 0 and out.exists():
                figures = json.loads(out.read_text())
                within = figures["parity"]["within_tolerance"]
                status = MISMATCH if within is False else OK
            else:
                error = f"the measuring process ended with code {code}:\n{_tail(directory / f'{name}.measure.log')}"
        except TimeoutError as exc:
            error = str(exc)
        artifact_name, artifact = _artifact_file(Path(outcome["path"]))
        with self.sessions.begin() as s:
            return deployments.add_result(s, self.job_id, framework, name, status, error=error,
                                          export_s=outcome["export_s"], size_bytes=outcome["size_bytes"],
                                          figures=figures, artifact_name=artifact_name, artifact=artifact)

    def serve_and_store(self, framework: str, name: str, path: str, result_id: int, directory: Path,
                        settings: dict) -> None:
        """Serve the artifact with batching on and off; each server measured at every concurrency."""
        with np.load(directory / "inputs.npz", allow_pickle=False) as inputs:
            samples = inputs["x"][:64]
        np.save(directory / "example.npy", samples[:8])  # the server's warm-up call and its input check
        served: list[dict] = []
        errors: list[str] = []
        for batching in settings["batching"]:
            self.step(f"serving {name}, dynamic batching {'on' if batching else 'off'}")
            try:
                served += self.serve_one(framework, name, path, batching, samples, directory, settings)
            except (RuntimeError, TimeoutError) as exc:
                errors.append(f"serving with batching {'on' if batching else 'off'}: {exc}")
            self.done += 1
        with self.sessions.begin() as s:
            deployments.set_serving(s, result_id, served, "\n".join(errors) or None)
        self.beat()

    def serve_one(self, framework: str, name: str, path: str, batching: bool, samples: np.ndarray,
                  directory: Path, settings: dict) -> list[dict]:
        port = loadgen.free_port()
        log = directory / f"{name}.serve.log"
        server = self.start(["-m", "engine.deploy.serve", "--framework", framework, "--format", name, "--path", path,
                             "--threads", str(settings["threads"]), "--port", str(port),
                             "--batching" if batching else "--no-batching", "--max-batch", str(settings["max_batch"]),
                             "--batch-wait-ms", str(settings["batch_wait_ms"]), "--example",
                             str(directory / "example.npy")], log, stdout=subprocess.PIPE)
        try:
            url = self._ready_url(server, log)
            figures = []
            for concurrency in settings["concurrency"]:
                self.beat()
                measured = loadgen.measure(url, samples, concurrency, settings["serve_duration_s"])
                figures.append({**measured, "batching": batching, "concurrency": concurrency,
                                "max_batch": settings["max_batch"] if batching else 1,
                                "batch_wait_ms": settings["batch_wait_ms"] if batching else 0.0,
                                "threads": settings["threads"]})
                if server.poll() is not None:
                    raise RuntimeError(f"the server process ended (code {server.returncode}) during the "
                                       f"measurement:\n{_tail(log)}")
            return figures
        finally:
            stop_process_trees([server.pid], grace_s=10.0)

    def _ready_url(self, server: subprocess.Popen, log: Path) -> str:
        """Read the server's stdout until its "ready <url>" line; fail when it exits or takes too long."""
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        os.set_blocking(server.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline:
            chunk = server.stdout.read() or b""
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith("ready "):
                    return line.split(" ", 1)[1].strip()
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode} before serving:\n{_tail(log)}")
            self.beat()
            time.sleep(POLL_S)
        raise TimeoutError(f"the server was not ready within {SERVE_START_TIMEOUT_S:g} s")


def _die_with_parent() -> None:
    """In a child, before exec: the kernel SIGKILLs it when the job process dies (a killed job leaves no worker)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: cancel and the reaper still stop the tree
        pass


def _artifact_file(path: Path) -> tuple[str, bytes]:
    """The artifact as one downloadable file: itself, or a directory (a SavedModel) zipped."""
    if not path.is_dir():
        return path.name, path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                archive.write(file, Path(path.name) / file.relative_to(path))
    return f"{path.name}.zip", buffer.getvalue()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _on_sigterm(signum, _frame):
    raise Cancelled(f"stopped by signal {signal.Signals(signum).name}")


def execute(job_id: int, db_url: Optional[str] = None) -> int:
    """Claim and carry out one queued job; 0 finished, 1 failed, 2 not queued, 3 cancelled."""
    url = resolve_db_url(db_url)
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        claimed = deployments.claim(s, job_id, os.getpid(), socket.gethostname())
    if not claimed:
        print(f"deployment {job_id} is not queued; nothing to do", file=sys.stderr)
        return 2
    job = _Job(sessions, job_id)
    directory = Path(tempfile.mkdtemp(prefix=f"arena-deploy-{job_id}-"))
    try:
        job.run(directory)
        status, error, code = FINISHED, None, 0
    except Cancelled as exc:
        status, error, code = CANCELLED, str(exc), 3
    except BaseException as exc:  # noqa: BLE001 - every way out leaves the job ended, with why
        status, error, code = FAILED, "".join(traceback.format_exception(exc)), 1
        print(error, file=sys.stderr, flush=True)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second signal cuts the job's end short
        job.stop_children()
        shutil.rmtree(directory, ignore_errors=True)
    with sessions.begin() as s:
        if status == FAILED and deployments.cancel_requested(s, job_id):
            status = CANCELLED
        deployments.end(s, job_id, status, error)
    return code


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {DEPLOY_MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("job_id", type=int)
    parser.add_argument("--db", help="SQLAlchemy URL (default: ARENA_DB_URL or the embedded SQLite file)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    return execute(args.job_id, args.db)


if __name__ == "__main__":
    sys.exit(main())
