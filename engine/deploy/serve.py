"""Serve one exported artifact over HTTP with Ray Serve: `python -m engine.deploy.serve --framework F --format X
--path ARTIFACT --threads N --port PORT`.

One handler serves every artifact: it loads it with the format's runtime module (engine/deploy/runtime_*.py,
`load(fmt, path, threads) -> predict`) and answers the TF Serving REST shape, which users already know:

    POST /predict  {"instances": [sample, ...]}  ->  200 {"predictions": [[logit, ...], ...]}
                   (each sample a nested list in the artifact's input layout; errors: 4xx/5xx {"error": "..."})
    GET  /healthz  ->  200 {"status": "ok", the server's settings, counters of predict calls and samples}

With --batching, requests are queued by Ray Serve's @serve.batch and merged into one predict call of at most
--max-batch samples, waiting at most --batch-wait-ms for a batch to fill; without it each request is its own
predict call. Either way predict runs on one thread of the replica (runtimes are not all thread-safe, and
the intra-op pool is already --threads wide), so the two modes differ only in how many samples a call gets.

The server is a local Ray instance of its own on this machine (never a cluster named by RAY_ADDRESS): one
replica asking for --threads CPUs, Serve's controller and HTTP proxy asking for none, so it fits 2 cores.
It listens on 127.0.0.1 unless --host says otherwise, prints one line `ready <predict URL>` on stdout once a
warm-up request has been answered through the HTTP proxy, and stops cleanly on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine import PROJECT_ROOT
from engine.deploy import formats

APP_NAME = "arena"
# Requests the replica accepts at once: well above --max-batch, or @serve.batch could never fill a batch
# (Serve's default is 5) and the excess would wait in the proxy, outside the batch queue.
MAX_ONGOING_REQUESTS = 256
READY_TIMEOUT_S = 120.0  # Ray's start and the artifact's load on a busy 2-core machine
STOP_TIMEOUT_S = 30.0  # serve.shutdown + ray.shutdown; past it the process exits anyway


class PortInUse(RuntimeError):
    """The HTTP port is taken by another process; the message names it."""


@dataclass(frozen=True)
class ServeSpec:
    """What one server serves and how; validated here, at the boundary."""

    framework: str
    fmt: str
    path: str
    threads: int
    port: int
    host: str = "127.0.0.1"
    batching: bool = True
    max_batch: int = 32  # most samples one predict call gets
    batch_wait_ms: float = 2.0  # longest a queued request waits for its batch to fill
    example: Optional[str] = None  # .npy of samples in the artifact's layout: warm-up, input shape and dtype

    def __post_init__(self):
        formats.get(self.framework, self.fmt)  # raises naming the bad value
        if not Path(self.path).exists():
            raise ValueError(f"path={self.path!r}: no such artifact")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads}: expected >= 1")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: expected 1..65535")
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch}: expected >= 1")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError(f"batch_wait_ms={self.batch_wait_ms}: expected 0..10000")
        if self.example is not None and not Path(self.example).is_file():
            raise ValueError(f"example={self.example!r}: no such .npy file")

    @property
    def url_host(self) -> str:
        """The host a client on this machine connects to (a wildcard address is reached through loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def base_url(self) -> str:
        return f"http://{self.url_host}:{self.port}"


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse naming the port if something already listens on host:port (or cannot bind it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn binds: SO_REUSEADDR ignores connections in TIME_WAIT, never another listener.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as error:
        raise PortInUse(f"port {port} on {host} is in use ({error.strerror}): choose another --port") from None
    finally:
        probe.close()


# ---------------------------------------------------------------------------------------------- the replica

class BadRequest(ValueError):
    """The client's fault: answered with 400 and this message."""


def samples_array(body: Any, example: Optional[np.ndarray]) -> np.ndarray:
    """A request body's instances as one array (N, *sample shape) of the artifact's dtype, or BadRequest."""
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequest('expected a JSON object {"instances": [sample, ...]}')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list of samples')
    try:
        x = np.asarray(instances)
    except ValueError:
        raise BadRequest("the instances are not all of one shape") from None
    if x.dtype.kind not in "biuf":
        raise BadRequest(f"instances must be numbers; got values of type {x.dtype}")
    if example is not None:
        if x.shape[1:] != example.shape[1:]:
            raise BadRequest(f"each sample must have shape {list(example.shape[1:])}, got {list(x.shape[1:])}")
        if example.dtype.kind in "iu" and x.dtype.kind == "f" and not np.array_equal(x, np.round(x)):
            raise BadRequest(f"this model takes whole numbers ({example.dtype.name} token ids), got fractions")
        return x.astype(example.dtype, copy=False)
    # Without an example: JSON numbers with a fraction are images or features (float32), whole numbers ids.
    return x.astype(np.float32 if x.dtype.kind == "f" else np.int64, copy=False)


class ArtifactServer:
    """The one replica: the artifact loaded once, predict on one thread, optional batching."""

    def __init__(self, spec: dict, example: Optional[np.ndarray], token: str):
        self.spec = ServeSpec(**spec)
        self.example = example
        self.token = token  # tells our server from another process answering on the port
        self.predict_calls = 0
        self.samples_predicted = 0
        self.largest_batch = 0
        # One thread: predict calls never overlap, whatever the runtime's thread-safety, and the event loop
        # stays free to read requests (and fill the next batch) while one computes.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        started = time.perf_counter()
        runtime = formats.runtime_module(self.spec.framework, self.spec.fmt)
        self.predict_fn = self.executor.submit(runtime.load, self.spec.fmt, Path(self.spec.path),
                                               self.spec.threads).result()
        self.load_s = time.perf_counter() - started
        if example is not None:  # first-call costs (lazy init, JIT profiling) are paid before "ready"
            self.executor.submit(self.predict_fn, example[:1]).result()
        from ray import serve  # here, not at the top: a taken port is reported before Ray is even imported

        # max_batch_size counts samples, not requests (batch_size_fn): a predict call never gets more than --max-batch.
        self.predict_batch = serve.batch(max_batch_size=self.spec.max_batch,
                                         batch_wait_timeout_s=self.spec.batch_wait_ms / 1000,
                                         batch_size_fn=_samples_in)(self._predict_queued)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        y = np.asarray(self.predict_fn(x), dtype=np.float32)
        if len(y) != len(x):
            raise RuntimeError(f"the runtime returned {len(y)} rows for {len(x)} samples")
        self.predict_calls += 1
        self.samples_predicted += len(x)
        self.largest_batch = max(self.largest_batch, len(x))
        return y

    async def predict_now(self, x: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._predict, x)

    async def _predict_queued(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """@serve.batch's handler: one predict call per (sample shape, dtype) among the queued requests, split
        back per request."""
        groups: dict[tuple, list[int]] = {}
        for index, x in enumerate(arrays):
            groups.setdefault((x.shape[1:], x.dtype.str), []).append(index)
        results: list[Optional[np.ndarray]] = [None] * len(arrays)
        for indices in groups.values():
            y = await self.predict_now(np.concatenate([arrays[i] for i in indices]))
            offsets = np.cumsum([len(arrays[i]) for i in indices])[:-1]
            for i, part in zip(indices, np.split(y, offsets)):
                results[i] = part
        return results

    def health(self) -> dict:
        settings = {**asdict(self.spec), "path": Path(self.spec.path).name,  # no directory names over HTTP
                    "example": self.spec.example and Path(self.spec.example).name}
        return {"status": "ok", "server": "arena", "token": self.token, **settings,
                "input": None if self.example is None else {"shape": list(self.example.shape[1:]),
                                                            "dtype": self.example.dtype.name},
                "load_s": round(self.load_s, 4), "predict_calls": self.predict_calls,
                "samples_predicted": self.samples_predicted, "largest_batch": self.largest_batch,
                "pid": os.getpid(), "cpu_count": os.cpu_count()}

    async def __call__(self, request: Request) -> JSONResponse:
        path, method = request.url.path.rstrip("/") or "/", request.method
        if path == "/healthz":
            return JSONResponse(self.health()) if method == "GET" else _error(405, "use GET /healthz")
        if path != "/predict":
            return _error(404, f"no route {path}: POST /predict or GET /healthz")
        if method != "POST":
            return _error(405, "use POST /predict")
        try:
            x = samples_array(json.loads(await request.body()), self.example)
        except json.JSONDecodeError as error:
            return _error(400, f"the body is not JSON: {error}")
        except BadRequest as error:
            return _error(400, str(error))
        try:
            if self.spec.batching and len(x) <= self.spec.max_batch:
                y = await self.predict_batch(x)
            else:  # no batching, or a request that is a full batch already
                y = await self.predict_now(x)
        except Exception as error:  # the runtime's failure: the client's answer names it
            return _error(500, f"predict failed: {type(error).__name__}: {error}")
        return JSONResponse({"predictions": y.tolist()})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _samples_in(arrays: list[np.ndarray]) -> int:
    return sum(len(x) for x in arrays)


# ------------------------------------------------------------------------------------------------- the driver

class _Stop(BaseException):
    """SIGTERM or SIGINT arrived: unwind to the cleanup."""


def _on_signal(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time; a second signal must not cut cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def _catch_stop_signals() -> None:
    """SIGTERM and SIGINT unwind to the cleanup. Called again after ray.init, whose core worker installs a
    SIGTERM handler of its own in the driver (it dumps a stack and exits, leaving Serve's cleanup undone)."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def _get_json(url: str, timeout_s: float, body: Optional[bytes] = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read())
        except ValueError:
            return error.code, None


def _proxy_unhealthy() -> bool:
    from ray import serve

    return any(str(getattr(status, "value", status)) == "UNHEALTHY" for status in serve.status().proxies.values())


def wait_until_served(spec: ServeSpec, token: str, example: Optional[np.ndarray]) -> None:
    """Block until our replica answers through the HTTP proxy, then warm up one predict over HTTP."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    while True:
        try:
            status, body = _get_json(f"{spec.base_url}/healthz", timeout_s=5)
            if status == 200 and isinstance(body, dict) and body.get("token") == token:
                break
            if status == 200:  # someone else's server took the port after our check
                raise PortInUse(f"port {spec.port} on {spec.host} is in use by another server: choose another --port")
            last = f"HTTP {status}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            last = str(getattr(error, "reason", error))
        if _proxy_unhealthy():
            raise PortInUse(f"Serve's HTTP proxy could not listen on port {spec.port} on {spec.host} "
                            f"(in use by another process?): choose another --port")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer on {spec.base_url} within {READY_TIMEOUT_S:.0f} s "
                               f"(last: {last}); is port {spec.port} free?")
        time.sleep(0.2)
    if example is not None:
        body = json.dumps({"instances": example[:1].tolist()}).encode()
        status, answer = _get_json(f"{spec.base_url}/predict", timeout_s=60, body=body)
        if status != 200:
            raise RuntimeError(f"the warm-up request failed with HTTP {status}: {answer}")


def start_ray(spec: ServeSpec, temp_dir: str) -> None:
    """A local Ray instance of this process's own: never a cluster named by RAY_ADDRESS, no dashboard."""
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The replica is a Ray worker process: it must import engine wherever it starts.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Ray nices its workers (15) by default: the replica and the HTTP proxy would then yield the cores to a
    # load generator on the same machine, and the figures would measure the client's priority, not the server.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray turns token authentication on for a new local cluster and, when it finds no token, writes one to
    # ~/.ray/auth_token, which every later `ray start` on the machine then adopts: a user's own cluster (or
    # Arena's Ray executor) would start demanding a token its drivers do not send. A token of this server's
    # own, in its environment only (Ray's workers inherit it), keeps the authentication and the home alone.
    # Set before Ray is imported: its native config reads the mode once, at import.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    import ray

    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, spec.threads), include_dashboard=False,
             _temp_dir=temp_dir, object_store_memory=100_000_000, namespace="arena-serve",
             logging_level="WARNING")


def start_serving(spec: ServeSpec, example: Optional[np.ndarray], token: str) -> None:
    """Serve's controller and HTTP proxy on host:port, then the one replica."""
    from ray import serve

    quiet = {"log_level": "WARNING", "enable_access_log": False}  # a log line per request costs CPU we measure
    try:
        serve.start(http_options={"host": spec.host, "port": spec.port}, proxy_location="HeadOnly",
                    logging_config=quiet)
    except Exception as error:  # the port was taken between check_port_free and the proxy's bind
        if "Failed to bind" in str(error):
            raise PortInUse(f"Serve's HTTP proxy could not listen on port {spec.port} on {spec.host} "
                            f"(in use by another process): choose another --port") from None
        raise
    deployment = serve.deployment(ArtifactServer, name="model").options(
        num_replicas=1, max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": spec.threads},
        graceful_shutdown_timeout_s=5, logging_config=quiet,
        max_constructor_retry_count=1)  # an artifact that fails to load fails the same way every time
    try:
        serve.run(deployment.bind(asdict(spec), example, token), name=APP_NAME, route_prefix="/")
    except RuntimeError as error:  # Serve's says "failed to update the deployments"; the replica's says why
        raise RuntimeError(f"{error}\n{_deployment_message()}") from None


def _deployment_message() -> str:
    """What Serve recorded about the replica (its constructor's traceback when it failed), last lines first."""
    from ray import serve

    try:
        message = serve.status().applications[APP_NAME].deployments["model"].message
    except Exception as error:  # the status itself is out of reach: say so rather than hide the first failure
        return f"(Serve's status could not be read: {error})"
    return message.strip()


def stop(temp_dir: str) -> None:
    """serve.shutdown, ray.shutdown, the temp dir gone; a watchdog ends the process if they hang."""
    import ray
    from ray import serve

    watchdog = threading.Timer(STOP_TIMEOUT_S, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    started = time.perf_counter()
    try:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                serve_s = time.perf_counter() - started
                ray.shutdown()
                print(f"stopped in {time.perf_counter() - started:.1f} s (Serve {serve_s:.1f} s)", file=sys.stderr,
                      flush=True)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
        watchdog.cancel()


def run(spec: ServeSpec) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean stop. Raises PortInUse or the startup's failure."""
    started = time.perf_counter()
    check_port_free(spec.host, spec.port)  # before Ray: a taken port fails in milliseconds, not after Ray's start
    example = np.load(spec.example) if spec.example else None
    token = secrets.token_hex(8)
    temp_dir = tempfile.mkdtemp(prefix="arena-serve-", dir="/tmp")  # short: AF_UNIX paths must stay < 108 bytes
    print(f"ray temp dir {temp_dir}", file=sys.stderr, flush=True)
    # stdout carries the one "ready" line; everything else written to it (Ray forwards its workers' output
    # and its own messages there) goes to stderr.
    ready_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _catch_stop_signals()
    try:
        start_ray(spec, temp_dir)
        _catch_stop_signals()
        ray_s = time.perf_counter() - started
        start_serving(spec, example, token)
        _catch_stop_signals()
        wait_until_served(spec, token, example)
        print(f"started in {time.perf_counter() - started:.1f} s (Ray {ray_s:.1f} s)", file=sys.stderr, flush=True)
        print(f"ready {spec.base_url}/predict", file=ready_out, flush=True)
        while True:
            time.sleep(3600)  # a signal's _Stop ends it
    except _Stop as why:
        print(f"stopping on {why}", file=sys.stderr, flush=True)
        return 0
    finally:
        stop(temp_dir)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.deploy.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", required=True, help="the framework that exported the artifact")
    parser.add_argument("--format", required=True, dest="fmt", help="the format's name (engine/deploy/formats.py)")
    parser.add_argument("--path", required=True, help="the artifact (file, or the SavedModel directory)")
    parser.add_argument("--threads", type=int, required=True, help="the runtime's intra-op threads")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="merge concurrent requests into one predict call (default on)")
    parser.add_argument("--max-batch", type=int, default=32, help="most samples one predict call gets")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="longest a request waits for its batch")
    parser.add_argument("--example", help=".npy of samples in the artifact's layout: the warm-up request, and the "
                                           "sample shape and dtype requests are checked against and cast to")
    args = parser.parse_args(argv)
    try:
        spec = ServeSpec(framework=args.framework, fmt=args.fmt, path=args.path, threads=args.threads,
                         port=args.port, host=args.host, batching=args.batching, max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms, example=args.example)
        return run(spec)
    except (ValueError, PortInUse) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Serve and Ray are stopped and the temp dir removed by now; what is left, the interpreter's final
    # collection of Ray's heap, takes seconds on 2 busy cores and does nothing anyone needs.
    os._exit(exit_code)
